// @ts-check
/**
 * `npm run bench`: three targets forwarding the same uploads to the sandbox (fast mode, no latency), side by
 * side in the same interleaved rounds: the service; the bare forwarder (bench/bare-forwarder.js, the Express +
 * multer + form-data + axios peer a user would otherwise write); and, when installed, nginx (for reference).
 * Servers share core 0, the load generator (this process, autocannon) runs on core 1. Targets are interleaved
 * and repeated; the report takes medians. Also measures, at one connection, what the service adds to going to
 * the sandbox directly. Writes BENCHMARKS.md.
 *
 * Environment: BENCH_DURATION_S (default 5), BENCH_ROUNDS (default 5), BENCH_WARMUP_S (default 5, per target
 * and body), BENCH_PROFILE=1 (the service runs with --cpu-prof and leaves a .cpuprofile in bench/profiles),
 * BENCH_OUTPUT (where the report goes, default BENCHMARKS.md at the repository's root), BENCH_SKIP_SERVICE=1
 * (leave the service out, to check the bench itself while the service does not start).
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
const OUTPUT = path.resolve(process.env.BENCH_OUTPUT ?? path.join(root, 'BENCHMARKS.md'));
const SKIP_SERVICE = process.env.BENCH_SKIP_SERVICE === '1';
const KEY = 'bench-key';
const SECRET = 'bench-secret';
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
/**
 * The service runs as the image runs it: the runtime settings (glibc, V8) of the Dockerfile's final stage. The
 * bare forwarder gets the same, so that the comparison is between the code, not the runtimes.
 */
const RUNTIME_SETTINGS = dockerfileEnvironment(['MALLOC_MMAP_THRESHOLD_', 'NODE_OPTIONS']);

// The load generator must not compete with the servers for their core.
if (process.env.BENCH_PINNED !== '1' && hasTaskset()) {
  const child = spawn('taskset', ['-c', '1', process.execPath, __filename], {
    stdio: 'inherit',
    env: { ...process.env, BENCH_PINNED: '1' },
  });
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
    for (const [, name, value] of env === null
      ? []
      : env[1].matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
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
  const random = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return (seed / 0x7fffffff) * noise;
  };
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
    parts.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${name}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`,
      ),
    );
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
  return {
    sign: sign({ apiKey: KEY, apiSecret: SECRET, currentTime: now, expireTime: now + 3600, random: '12345' }),
    sign_version: 'hmac_sha1',
    security_level: '2',
    force_compare: '0',
  };
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
    children = execFileSync('pgrep', ['-P', String(pid)])
      .toString()
      .split('\n')
      .filter(Boolean)
      .map(Number);
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
    const line = fs
      .readFileSync(`/proc/${one}/status`, 'utf8')
      .split('\n')
      .find((text) => text.startsWith('VmHWM:'));
    return sum + Number(line?.replace(/\D+/g, '') ?? 0) / 1024;
  }, 0);
}

/**
 * Waits until the servers on core 0 are idle: a target still working on requests whose client has gone (the bare
 * forwarder never cancels its FaceID call) must not take the core from the next target's run.
 */
async function settle(pids) {
  const busy = () => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  for (let waited = 0; waited < 30_000; waited += 200) {
    const before = busy();
    await new Promise((resolve) => setTimeout(resolve, 200));
    if (busy() - before <= 0.01) return;
  }
}

function nginxPath() {
  for (const candidate of ['/usr/sbin/nginx', '/usr/bin/nginx']) if (fs.existsSync(candidate)) return candidate;
  return undefined;
}

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'faceid-bench-'));
  const children = [];
  const stop = () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
  };
  process.on('exit', stop);

  const sandboxPort = await freePort();
  const sandbox = startPinned(
    process.execPath,
    [path.join(root, 'dist', 'sandbox', 'main.js')],
    {
      SANDBOX_PORT: String(sandboxPort),
      SANDBOX_API_KEY: KEY,
      SANDBOX_API_SECRET: SECRET,
      LOG_LEVEL: 'warn',
    },
    path.join(work, 'sandbox.log'),
  );
  children.push(sandbox);
  const sandboxUrl = `http://127.0.0.1:${sandboxPort}`;
  await waitFor(`${sandboxUrl}/healthz`);

  // Not measured under load (the sandbox is what every target forwards to): the base of the added latency.
  const direct = {
    key: 'direct',
    name: 'direct to sandbox',
    url: `${sandboxUrl}/faceid/v3/sdk/get_biz_token`,
    direct: true,
    pid: undefined,
  };
  /** The targets measured side by side at every point, in the report's order. */
  const targets = [];

  if (!SKIP_SERVICE) {
    const servicePort = await freePort();
    const profileDir = path.join(__dirname, 'profiles');
    const nodeArgs = process.env.BENCH_PROFILE === '1' ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
    const service = startPinned(
      process.execPath,
      [...nodeArgs, path.join(root, 'dist', 'server.js')],
      {
        NODE_ENV: 'development',
        PORT: String(servicePort),
        LOG_LEVEL: 'info',
        FACEID_BASE_URL: sandboxUrl,
        FACEID_API_KEY: KEY,
        FACEID_API_SECRET: SECRET,
        AUTH_MODE: 'none',
        RATE_LIMIT_MAX: '1000000',
        FACEID_MAX_CONCURRENCY: '64',
        ...RUNTIME_SETTINGS,
      },
      path.join(work, 'service.log'),
    );
    children.push(service);
    const serviceUrl = `http://127.0.0.1:${servicePort}`;
    await waitFor(`${serviceUrl}/healthz`);
    targets.push({
      key: 'service',
      name: 'service',
      url: `${serviceUrl}/v1/biz-tokens`,
      direct: false,
      pid: service.pid,
    });
  }

  // Started like the service: the same core, the same runtime settings, the same sandbox. NODE_ENV=production
  // as a user would deploy it (the service gets development only because the bench runs it with AUTH_MODE=none).
  const forwarderPort = await freePort();
  const forwarder = startPinned(
    process.execPath,
    [path.join(__dirname, 'bare-forwarder.js')],
    {
      NODE_ENV: 'production',
      PORT: String(forwarderPort),
      FACEID_BASE_URL: sandboxUrl,
      FACEID_API_KEY: KEY,
      FACEID_API_SECRET: SECRET,
      ...RUNTIME_SETTINGS,
    },
    path.join(work, 'forwarder.log'),
  );
  children.push(forwarder);
  const forwarderUrl = `http://127.0.0.1:${forwarderPort}`;
  // It has no health route: any answer (Express's 404) means it is listening.
  await waitFor(`${forwarderUrl}/healthz`);
  targets.push({
    key: 'forwarder',
    name: 'bare forwarder',
    url: `${forwarderUrl}/v1/biz-tokens`,
    direct: false,
    pid: forwarder.pid,
  });

  const nginx = nginxPath();
  if (nginx !== undefined) {
    const nginxPort = await freePort();
    const conf = path.join(work, 'nginx.conf');
    fs.writeFileSync(
      conf,
      `worker_processes 1; daemon off; pid ${work}/nginx.pid; error_log ${work}/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; client_max_body_size 25m; client_body_buffer_size 1m; proxy_request_buffering on;
  upstream sandbox { server 127.0.0.1:${sandboxPort}; keepalive 64; }
  server { listen 127.0.0.1:${nginxPort};
    location = /v1/biz-tokens { proxy_pass http://sandbox/faceid/v3/sdk/get_biz_token; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
`,
    );
    const proxy = startPinned(nginx, ['-c', conf, '-p', work], {}, path.join(work, 'nginx.log'));
    children.push(proxy);
    await new Promise((resolve) => setTimeout(resolve, 500));
    targets.push({
      key: 'nginx',
      name: 'nginx (reference)',
      url: `http://127.0.0.1:${nginxPort}/v1/biz-tokens`,
      direct: true,
      pid: proxy.pid,
    });
  }

  process.stdout.write('building the request bodies...\n');
  const small = photo(340, 260, 90, 100);
  const large = photo(2400, 1800, 92, 160);
  const clientFields = { comparison_type: '0', liveness_type: 'meglive', liveness_timeout: '30', biz_no: 'bench' };
  const bodies = [
    { name: `${Math.round(small.length / 1024)} KB photo + fields`, key: 'small', files: { image_ref1: small } },
    {
      name: `${(large.length / 1024 / 1024).toFixed(1)} MB photo + ${Math.round(small.length / 1024)} KB photo`,
      key: 'large',
      files: { image_ref1: large, image_ref2: small },
    },
  ];
  const signed = signedFields();
  for (const body of bodies) {
    // What an app sends (the service and the forwarder sign it), and what nginx and the direct calls pass on as is.
    body.forService = multipart({ ...clientFields, uuid: 'bench-user' }, body.files);
    body.forUpstream = multipart({ ...signed, ...clientFields, uuid: 'bench-user' }, body.files);
  }

  const run = async (target, body, connections, duration) => {
    const { body: payload, contentType } = target.direct ? body.forUpstream : body.forService;
    const pid = target.pid;
    const cpuBefore = pid === undefined ? 0 : cpuSeconds(pid);
    if (pid !== undefined) resetPeakRss(pid);
    const result = await autocannon({
      url: target.url,
      method: 'POST',
      connections,
      duration,
      headers: { 'content-type': contentType },
      body: payload,
    });
    const ok = result['2xx'];
    // No answer at all within the run (64 large uploads can take longer): no latency, rather than autocannon's 0.
    const answered = result.latency.totalCount > 0;
    const sample = {
      reqPerSec: ok / duration,
      mean: answered ? result.latency.mean : undefined,
      p50: answered ? result.latency.p50 : undefined,
      errors: result.errors + result.non2xx + result.timeouts,
      cpuMsPerRequest: pid === undefined || ok === 0 ? undefined : ((cpuSeconds(pid) - cpuBefore) / ok) * 1000,
      peakRss: pid === undefined ? undefined : peakRssMiB(pid),
    };
    await settle([sandbox.pid, ...targets.map((one) => one.pid)]);
    return sample;
  };

  // Measure the steady state a long-running server is in: V8 optimises the hot path over the first seconds
  // of load (the first of several 5 s runs was seen at 1.3 CPU-ms per small request, the next at 0.75).
  for (const target of targets) for (const body of bodies) await run(target, body, 16, WARMUP_S);

  /** @type {Record<string, any[]>} */
  const samples = {};
  const cases = [];
  for (const body of bodies) for (const connections of [16, 64]) cases.push({ body, connections });
  for (let round = 1; round <= ROUNDS; round += 1) {
    for (const { body, connections } of cases) {
      // Alternating the order: no target always runs right after the same one.
      for (const target of round % 2 === 1 ? targets : [...targets].reverse()) {
        const sample = await run(target, body, connections, DURATION_S);
        const key = `${body.key}|${connections}|${target.key}`;
        samples[key] = [...(samples[key] ?? []), sample];
        process.stdout.write(
          `round ${round} ${body.name} c=${connections} ${target.name}: ${sample.reqPerSec.toFixed(0)} req/s p50 ${fixed(sample.p50)} ms errors ${sample.errors}${sample.cpuMsPerRequest === undefined ? '' : ` CPU ${sample.cpuMsPerRequest.toFixed(3)} ms/req`}${sample.peakRss === undefined ? '' : ` peak ${sample.peakRss.toFixed(0)} MiB`}\n`,
        );
      }
    }
  }
  // Below saturation: what the service (and the forwarder, for comparison) adds to one request's latency.
  const single = {};
  const singleTargets = [direct, ...targets.filter((target) => target.key !== 'nginx')];
  for (let round = 0; round < ROUNDS; round += 1) {
    // The mean, not p50: autocannon's percentiles are whole milliseconds, too coarse for this.
    for (const target of singleTargets) {
      const { mean } = await run(target, bodies[0], 1, DURATION_S);
      single[target.key] = [...(single[target.key] ?? []), mean];
    }
  }

  // Per round, so that growth across rounds (a leak) shows.
  const rssRounds = {};
  for (const target of targets)
    rssRounds[target.key] = samples[`large|64|${target.key}`]?.map((sample) => sample.peakRss) ?? [];
  stop();
  writeReport({ targets, bodies, samples, single, rssRounds, nginx: nginx !== undefined });
  fs.rmSync(work, { recursive: true, force: true });
}

const median = (values) => {
  const sorted = values.filter((value) => value !== undefined && !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const fixed = (value, digits = 0) => (value === undefined ? 'n/a' : value.toFixed(digits));
const ratio = (value, base) => (value === undefined || base === undefined || base === 0 ? undefined : value / base);

/** The target's cell: the ratio and whether it is met (a forwarder that finished nothing in the run is beaten). */
function againstForwarder(service, forwarder) {
  if (service === undefined || forwarder === undefined) return 'n/a';
  if (forwarder === 0) return service > 0 ? 'forwarder 0 req/s (met)' : 'both 0 req/s';
  const value = service / forwarder;
  return `${value.toFixed(2)}x ${value >= 1 ? '(met)' : '(missed)'}`;
}

function writeReport({ targets, bodies, samples, single, rssRounds, nginx }) {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const names = (list) => list.map((target) => target.key).join(' / ');
  const memoryTargets = targets.filter((target) => target.key !== 'nginx');
  const lines = [
    '# Benchmarks',
    '',
    `Measured by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}: ${os.cpus().length} cores (${cpu}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${os.type()} ${os.release()}.`,
    `Servers (sandbox, ${targets.map((target) => target.name).join(', ')}) pinned to core 0, the load generator (autocannon) to core 1; each target warmed with each body for ${WARMUP_S} s, then ${ROUNDS} interleaved rounds of ${DURATION_S} s per point, the targets side by side in each round; medians.`,
    SKIP_SERVICE
      ? 'The service was left out of this run (BENCH_SKIP_SERVICE=1).'
      : `The service runs as the Dockerfile runs it (${Object.entries(RUNTIME_SETTINGS)
          .map(([name, value]) => `${name}=${value}`)
          .join(', ')}), with LOG_LEVEL=info (one JSON line per request) and AUTH_MODE=none, without Redis.`,
    'The bare forwarder (`bench/bare-forwarder.js`) is the peer a user would otherwise write: Express 5, multer with memory storage, form-data, axios with its defaults; no checks, no bounds, no logging; the same runtime settings, NODE_ENV=production.',
    `Target: the service's req/s at least the bare forwarder's (>= 1.00x) at each point. ${nginx ? 'nginx forwarding the same bodies is reported for reference only.' : 'nginx is not installed on this machine: no reference column.'}`,
    '',
    `| body | connections | req/s (${names(targets)}) | service / forwarder req/s (target >= 1.00x) | service / nginx req/s (reference) | CPU-ms per req (${names(targets)}) | p50 ms (${names(targets)}) | peak RSS MiB (${names(memoryTargets)}) | errors (${names(targets)}) |`,
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const body of bodies) {
    for (const connections of [16, 64]) {
      const stat = (target, field) =>
        median((samples[`${body.key}|${connections}|${target.key}`] ?? []).map((sample) => sample[field]));
      const each = (list, field, digits) => list.map((target) => fixed(stat(target, field), digits)).join(' / ');
      const rateOf = (key) => {
        const target = targets.find((one) => one.key === key);
        return target === undefined ? undefined : stat(target, 'reqPerSec');
      };
      const toNginx = ratio(rateOf('service'), rateOf('nginx'));
      const errors = targets
        .map((target) =>
          (samples[`${body.key}|${connections}|${target.key}`] ?? []).reduce((sum, sample) => sum + sample.errors, 0),
        )
        .join(' / ');
      lines.push(
        `| ${body.name} | ${connections} | ${each(targets, 'reqPerSec', 0)} | ${againstForwarder(rateOf('service'), rateOf('forwarder'))} | ${toNginx === undefined ? 'n/a' : `${toNginx.toFixed(2)}x`} | ${each(targets, 'cpuMsPerRequest', 3)} | ${each(targets, 'p50', 1)} | ${each(memoryTargets, 'peakRss', 0)} | ${errors} |`,
      );
    }
  }
  const directMean = median(single.direct ?? []);
  const latencies = targets
    .filter((target) => single[target.key] !== undefined)
    .map((target) => {
      const mean = median(single[target.key]);
      return `through the ${target.name} ${fixed(mean, 2)} ms (added ${mean === undefined || directMean === undefined ? 'n/a' : (mean - directMean).toFixed(2)} ms)`;
    });
  lines.push(
    '',
    `Added latency at 1 connection, ${bodies[0].name} (median of the rounds' mean latency): direct ${fixed(directMean, 2)} ms, ${latencies.join(', ')}.`,
    '',
    `Peak RSS in each round of 64 connections with the large body (growth across rounds would mean a leak): ${memoryTargets.map((target) => `${target.name} ${rssRounds[target.key].map((value) => fixed(value)).join(', ')} MiB`).join('; ')}.`,
    '',
  );
  const notes = path.join(__dirname, 'NOTES.md');
  if (fs.existsSync(notes)) lines.push(fs.readFileSync(notes, 'utf8'));
  fs.writeFileSync(OUTPUT, `${lines.join('\n')}\n`);
  process.stdout.write(`${lines.join('\n')}\nwritten to ${OUTPUT}\n`);
}
