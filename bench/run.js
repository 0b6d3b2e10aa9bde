// @ts-check
/**
 * `npm run bench`: the service against the sandbox (fast mode, no latency), compared with going to the
 * sandbox directly and, when nginx is installed, with nginx forwarding the same bodies. Servers share
 * core 0, the load generator (this process, autocannon) runs on core 1. Targets are interleaved and
 * repeated; the report takes medians. Writes BENCHMARKS.md.
 *
 * Environment: BENCH_DURATION_S (default 5), BENCH_ROUNDS (default 5), BENCH_WARMUP_S (default 5, per target
 * and body), BENCH_PROFILE=1 (the service runs with --cpu-prof and leaves a .cpuprofile in bench/profiles).
 */
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const autocannon = require('autocannon');
const { encode } = require('jpeg-js');

const root = path.join(__dirname, '..');
const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 5);
// Five rounds: on a noisy shared machine a single run's CPU per request moves by a quarter either way.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const WARMUP_S = Number(process.env.BENCH_WARMUP_S ?? 5);
const KEY = 'bench-key';
const SECRET = 'bench-secret';
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
/** The service runs as the image runs it: the runtime settings (glibc, V8) of the Dockerfile's final stage. */
const RUNTIME_SETTINGS = dockerfileEnvironment(['MALLOC_MMAP_THRESHOLD_', 'NODE_OPTIONS']);

// The load generator must not compete with the servers for their core.
if (process.env.BENCH_PINNED !== '1' && hasTaskset()) {
  const child = spawn('taskset', ['-c', '1', process.execPath, __filename], { stdio: 'inherit', env: { ...process.env, BENCH_PINNED: '1' } });
  child.on('exit', (code) => process.exit(code ?? 1));
} else {
  main().catch((error) => {
    process.stderr.write(`bench failed: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}

function hasTaskset() {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return os.cpus().length >= 2;
  } catch {
    return false;
  }
}

/** The named variables set by ENV in the Dockerfile's final stage (`NAME=value` pairs, values may be quoted). */
function dockerfileEnvironment(names) {
  const dockerfile = fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8').replace(/\\\r?\n/g, ' ');
  const lines = dockerfile.split(/\r?\n/);
  const finalStage = lines.slice(lines.findLastIndex((line) => /^\s*FROM\s/i.test(line)));
  const set = {};
  for (const line of finalStage) {
    const env = /^\s*ENV\s+(.*)$/i.exec(line);
    for (const [, name, value] of env === null ? [] : env[1].matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
      set[name] = value.startsWith('"') ? JSON.parse(value) : value;
    }
  }
  const settings = {};
  for (const name of names) {
    if (set[name] === undefined) throw new Error(`the Dockerfile's final stage sets no ${name}`);
    settings[name] = set[name];
  }
  return settings;
}

/** A JPEG of roughly the wanted size: noise makes it incompressible enough. */
function photo(width, height, quality, noise) {
  const rgba = Buffer.alloc(width * height * 4);
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) * noise;
  for (let index = 0, pixel = 0; index < rgba.length; index += 4, pixel += 1) {
    const x = pixel % width;
    const y = Math.floor(pixel / width);
    rgba[index] = (x * 3 + y + random()) & 255;
    rgba[index + 1] = (y * 5 + random()) & 255;
    rgba[index + 2] = ((x ^ y) + random()) & 255;
    rgba[index + 3] = 255;
  }
  return Buffer.from(encode({ data: rgba, width, height }, quality).data);
}

/** One multipart body, built once and replayed by autocannon. */
function multipart(fields, files) {
  const boundary = `bench${Date.now()}`;
  const parts = [];
  for (const [name, value] of Object.entries(fields)) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`));
  }
  for (const [name, bytes] of Object.entries(files)) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`));
    parts.push(bytes, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), contentType: `multipart/form-data; boundary=${boundary}` };
}

/** What the sandbox accepts directly: the signed fields the service would add. */
function signedFields() {
  const { sign } = require(path.join(root, 'dist', 'faceid', 'sign.js'));
  // A reusable sign valid for the whole run (the sandbox accepts it until it expires).
  const now = Math.floor(Date.now() / 1000);
  return { sign: sign({ apiKey: KEY, apiSecret: SECRET, currentTime: now, expireTime: now + 3600, random: '12345' }), sign_version: 'hmac_sha1', security_level: '2', force_compare: '0' };
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(url) {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    try {
      if ((await fetch(url)).status < 500) return;
    } catch {
      // not up yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} never answered`);
}

function startPinned(command, args, env, logFile) {
  const out = fs.openSync(logFile, 'w');
  const child = hasTaskset()
    ? spawn('taskset', ['-c', '0', command, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', out, out] })
    : spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', out, out] });
  return child;
}

/** A server and its children (nginx's worker does nginx's work); taskset execs, so the pid is the server's. */
function processTree(pid) {
  let children = [];
  try {
    children = execFileSync('pgrep', ['-P', String(pid)]).toString().split('\n').filter(Boolean).map(Number);
  } catch {
    // no children
  }
  return [pid, ...children];
}

function cpuSeconds(pid) {
  return processTree(pid).reduce((sum, one) => {
    const fields = fs.readFileSync(`/proc/${one}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return sum + (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  }, 0);
}

function resetPeakRss(pid) {
  for (const one of processTree(pid)) {
    try {
      fs.writeFileSync(`/proc/${one}/clear_refs`, '5');
    } catch {
      // older kernels: the peak is then since start
    }
  }
}

/** Peak resident memory, summed over the server's processes. */
function peakRssMiB(pid) {
  return processTree(pid).reduce((sum, one) => {
    const line = fs.readFileSync(`/proc/${one}/status`, 'utf8').split('\n').find((text) => text.startsWith('VmHWM:'));
    return sum + Number(line?.replace(/\D+/g, '') ?? 0) / 1024;
  }, 0);
}

function nginxPath() {
  for (const candidate of ['/usr/sbin/nginx', '/usr/bin/nginx']) if (fs.existsSync(candidate)) return candidate;
  return undefined;
}

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'faceid-bench-'));
  const children = [];
  const stop = () => children.forEach((child) => child.exitCode === null && child.kill('SIGTERM'));
  process.on('exit', stop);

  const sandboxPort = await freePort();
  const sandbox = startPinned(process.execPath, [path.join(root, 'dist', 'sandbox', 'main.js')], {
    SANDBOX_PORT: String(sandboxPort), SANDBOX_API_KEY: KEY, SANDBOX_API_SECRET: SECRET, LOG_LEVEL: 'warn',
  }, path.join(work, 'sandbox.log'));
  children.push(sandbox);
  const sandboxUrl = `http://127.0.0.1:${sandboxPort}`;
  await waitFor(`${sandboxUrl}/healthz`);

  const servicePort = await freePort();
  const profileDir = path.join(__dirname, 'profiles');
  const nodeArgs = process.env.BENCH_PROFILE === '1' ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const service = startPinned(process.execPath, [...nodeArgs, path.join(root, 'dist', 'server.js')], {
    NODE_ENV: 'development', PORT: String(servicePort), LOG_LEVEL: 'info', FACEID_BASE_URL: sandboxUrl, FACEID_API_KEY: KEY,
    FACEID_API_SECRET: SECRET, AUTH_MODE: 'none', RATE_LIMIT_MAX: '1000000', FACEID_MAX_CONCURRENCY: '64',
    ...RUNTIME_SETTINGS,
  }, path.join(work, 'service.log'));
  children.push(service);
  const serviceUrl = `http://127.0.0.1:${servicePort}`;
  await waitFor(`${serviceUrl}/healthz`);

  const targets = [
    { name: 'direct to sandbox', url: `${sandboxUrl}/faceid/v3/sdk/get_biz_token`, direct: true, pid: undefined },
    { name: 'through the service', url: `${serviceUrl}/v1/biz-tokens`, direct: false, pid: service.pid },
  ];
  const nginx = nginxPath();
  if (nginx !== undefined) {
    const nginxPort = await freePort();
    const conf = path.join(work, 'nginx.conf');
    fs.writeFileSync(conf, `worker_processes 1; daemon off; pid ${work}/nginx.pid; error_log ${work}/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; client_max_body_size 25m; client_body_buffer_size 1m; proxy_request_buffering on;
  upstream sandbox { server 127.0.0.1:${sandboxPort}; keepalive 64; }
  server { listen 127.0.0.1:${nginxPort};
    location = /v1/biz-tokens { proxy_pass http://sandbox/faceid/v3/sdk/get_biz_token; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
`);
    const proxy = startPinned(nginx, ['-c', conf, '-p', work], {}, path.join(work, 'nginx.log'));
    children.push(proxy);
    await new Promise((resolve) => setTimeout(resolve, 500));
    targets.push({ name: 'nginx (reference)', url: `http://127.0.0.1:${nginxPort}/v1/biz-tokens`, direct: true, pid: proxy.pid });
  }

  process.stdout.write('building the request bodies...\n');
  const small = photo(340, 260, 90, 100);
  const large = photo(2400, 1800, 92, 160);
  const clientFields = { comparison_type: '0', liveness_type: 'meglive', liveness_timeout: '30', biz_no: 'bench' };
  const bodies = [
    { name: `${Math.round(small.length / 1024)} KB photo + fields`, key: 'small', files: { image_ref1: small } },
    { name: `${(large.length / 1024 / 1024).toFixed(1)} MB photo + ${Math.round(small.length / 1024)} KB photo`, key: 'large', files: { image_ref1: large, image_ref2: small } },
  ];
  const direct = signedFields();
  for (const body of bodies) {
    body.forService = multipart({ ...clientFields, uuid: 'bench-user' }, body.files);
    body.forUpstream = multipart({ ...direct, ...clientFields, uuid: 'bench-user' }, body.files);
  }

  const run = async (target, body, connections, duration) => {
    const { body: payload, contentType } = target.direct ? body.forUpstream : body.forService;
    const pid = target.pid;
    const cpuBefore = pid === undefined ? 0 : cpuSeconds(pid);
    if (pid !== undefined) resetPeakRss(pid);
    const result = await autocannon({ url: target.url, method: 'POST', connections, duration, headers: { 'content-type': contentType }, body: payload });
    const ok = result['2xx'];
    return {
      reqPerSec: ok / duration,
      mean: result.latency.mean,
      p50: result.latency.p50,
      p99: result.latency.p99,
      errors: result.errors + result.non2xx + result.timeouts,
      cpuPer1000: pid === undefined || ok === 0 ? undefined : ((cpuSeconds(pid) - cpuBefore) / ok) * 1000,
      peakRss: pid === undefined ? undefined : peakRssMiB(pid),
    };
  };

  // Measure the steady state a long-running service is in: V8 optimises the hot path over the first seconds
  // of load (the first of several 5 s runs was seen at 1.3 CPU-ms per small request, the next at 0.75).
  for (const target of targets) for (const body of bodies) await run(target, body, 16, WARMUP_S);

  /** @type {Record<string, any[]>} */
  const samples = {};
  const cases = [];
  for (const body of bodies) for (const connections of [16, 64]) cases.push({ body, connections });
  for (let round = 1; round <= ROUNDS; round += 1) {
    for (const { body, connections } of cases) {
      for (const target of round % 2 === 1 ? targets : [...targets].reverse()) {
        const key = `${body.key}|${connections}|${target.name}`;
        const sample = await run(target, body, connections, DURATION_S);
        (samples[key] ??= []).push(sample);
        process.stdout.write(`round ${round} ${body.name} c=${connections} ${target.name}: ${sample.reqPerSec.toFixed(0)} req/s p50 ${sample.p50} ms errors ${sample.errors}${sample.cpuPer1000 === undefined ? '' : ` CPU ${sample.cpuPer1000.toFixed(3)} ms/req`}${sample.peakRss === undefined ? '' : ` peak ${sample.peakRss.toFixed(0)} MiB`}\n`);
      }
    }
  }
  // Below saturation: what the service adds to one request's latency.
  const single = {};
  for (let round = 0; round < ROUNDS; round += 1) {
    // The mean, not p50: autocannon's percentiles are whole milliseconds, too coarse for this.
    for (const target of targets.slice(0, 2)) (single[target.name] ??= []).push((await run(target, bodies[0], 1, DURATION_S)).mean);
  }

  const serviceLog = fs.readFileSync(path.join(work, 'service.log'), 'utf8');
  const rssGrowth = samples[`large|64|through the service`]?.map((sample) => sample.peakRss) ?? [];
  stop();
  writeReport({ targets, bodies, samples, single, rssGrowth, nginx: nginx !== undefined, serviceLogLines: serviceLog.split('\n').length });
  fs.rmSync(work, { recursive: true, force: true });
}

const median = (values) => {
  const sorted = values.filter((value) => value !== undefined && !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const fixed = (value, digits = 0) => (value === undefined ? 'n/a' : value.toFixed(digits));

function writeReport({ targets, bodies, samples, single, rssGrowth, nginx }) {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const lines = [
    '# Benchmarks',
    '',
    `Measured by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}: ${os.cpus().length} cores (${cpu}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${os.type()} ${os.release()}.`,
    `Servers (sandbox, service${nginx ? ', nginx' : ''}) pinned to core 0, the load generator (autocannon) to core 1; each target warmed with each body for ${WARMUP_S} s, then ${ROUNDS} interleaved rounds of ${DURATION_S} s per case; medians.`,
    `The service runs as the Dockerfile runs it (${Object.entries(RUNTIME_SETTINGS).map(([name, value]) => `${name}=${value}`).join(', ')}), with LOG_LEVEL=info (one JSON line per request) and AUTH_MODE=none, without Redis.`,
    '',
    '| body | connections | target | req/s | p50 ms | p99 ms | CPU-s per 1000 req | peak RSS MiB | errors | req/s to nginx | CPU per req to nginx |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const body of bodies) {
    for (const connections of [16, 64]) {
      const referenceList = samples[`${body.key}|${connections}|nginx (reference)`] ?? [];
      const reference = median(referenceList.map((sample) => sample.reqPerSec));
      const referenceCpu = median(referenceList.map((sample) => sample.cpuPer1000));
      const ratio = (value, base) => (value === undefined || base === undefined ? 'n/a' : (value / base).toFixed(2));
      for (const target of targets) {
        const list = samples[`${body.key}|${connections}|${target.name}`] ?? [];
        const rate = median(list.map((sample) => sample.reqPerSec));
        const cpu = median(list.map((sample) => sample.cpuPer1000));
        lines.push(
          `| ${body.name} | ${connections} | ${target.name} | ${fixed(rate)} | ${fixed(median(list.map((s) => s.p50)), 1)} | ${fixed(median(list.map((s) => s.p99)), 1)} | ${fixed(cpu, 3)} | ${fixed(median(list.map((s) => s.peakRss)))} | ${list.reduce((sum, s) => sum + s.errors, 0)} | ${ratio(rate, reference)} | ${ratio(cpu, referenceCpu)} |`,
        );
      }
    }
  }
  const directP50 = median(single['direct to sandbox'] ?? []);
  const serviceP50 = median(single['through the service'] ?? []);
  lines.push(
    '',
    `Added latency at 1 connection, ${bodies[0].name} (median of the rounds' mean latency): direct ${fixed(directP50, 2)} ms, through the service ${fixed(serviceP50, 2)} ms, added ${directP50 === undefined || serviceP50 === undefined ? 'n/a' : (serviceP50 - directP50).toFixed(2)} ms.`,
    '',
    `Peak RSS of the service in each round of 64 connections with the large body: ${rssGrowth.map((value) => fixed(value)).join(', ')} MiB (growth across rounds would mean a leak).`,
    '',
  );
  const notes = path.join(__dirname, 'NOTES.md');
  if (fs.existsSync(notes)) lines.push(fs.readFileSync(notes, 'utf8'));
  fs.writeFileSync(path.join(root, 'BENCHMARKS.md'), `${lines.join('\n')}\n`);
  process.stdout.write(`${lines.join('\n')}\nwritten to BENCHMARKS.md\n`);
}
