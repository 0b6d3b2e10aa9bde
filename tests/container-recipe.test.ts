import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { jpeg } from './fixtures/images';
import { type ChildService, startChildService } from './helpers/child-service';

/**
 * No Docker engine runs here, so this does what the Dockerfile's final stage does: a production-only
 * install of the built output in a clean folder, then the service and the sandbox started from there with
 * the compose file's environment (container host names mapped to loopback).
 */
const root = path.join(__dirname, '..');
const run = promisify(execFile);

interface ComposeService {
  environment?: Record<string, string>;
  command?: string[];
}

let folder: string;
let sandbox: ChildProcess | undefined;
let service: ChildService | undefined;

beforeAll(async () => {
  folder = mkdtempSync(path.join(tmpdir(), 'faceid-token-service-image-'));
  copyFileSync(path.join(root, 'package.json'), path.join(folder, 'package.json'));
  copyFileSync(path.join(root, 'package-lock.json'), path.join(folder, 'package-lock.json'));
  cpSync(path.join(root, 'dist'), path.join(folder, 'dist'), { recursive: true });
  // The same command as the Dockerfile's final stage; the cache left by the main install keeps it local.
  await run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'], {
    cwd: folder,
    timeout: 120_000,
  });
}, 150_000);

afterAll(async () => {
  await service?.stop();
  sandbox?.kill('SIGTERM');
  rmSync(folder, { recursive: true, force: true });
});

describe('the container recipe', () => {
  test('when the production install is done, then no development dependency is in it', () => {
    expect(existsSync(path.join(folder, 'node_modules', 'express'))).toBe(true);
    for (const devOnly of ['jest', 'typescript', 'ts-jest', 'supertest']) {
      expect(existsSync(path.join(folder, 'node_modules', devOnly))).toBe(false);
    }
  });

  test('when the image sets Node flags, then `npm start` passes the same ones', () => {
    const { NODE_OPTIONS: flags } = imageRuntimeSettings();
    const { scripts } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(flags).toMatch(/^--max-semi-space-size=\d+$/);
    expect(scripts.start).toBe(`node ${flags} dist/server.js`);
  });

  test("when the service and sandbox start with the compose environment and the image's runtime settings, then a biz_token comes back", async () => {
    const compose = parse(readFileSync(path.join(root, 'docker-compose.yml'), 'utf8')) as {
      services: Record<string, ComposeService>;
    };
    const sandboxSpec = compose.services['faceid-sandbox'];
    const serviceSpec = compose.services['token-service'];
    expect(sandboxSpec?.command).toEqual(['node', 'dist/sandbox/main.js']);

    const sandboxPort = 31_000 + Math.floor(Math.random() * 2000);
    sandbox = spawn(process.execPath, [path.join(folder, 'dist', 'sandbox', 'main.js')], {
      cwd: folder,
      env: {
        PATH: process.env.PATH ?? '',
        ...sandboxSpec?.environment,
        SANDBOX_HOST: '127.0.0.1',
        SANDBOX_PORT: String(sandboxPort),
      },
      stdio: 'ignore',
    });
    await waitFor(`http://127.0.0.1:${sandboxPort}/healthz`);

    const environment = { ...serviceSpec?.environment };
    environment.FACEID_BASE_URL = (environment.FACEID_BASE_URL ?? '').replace(
      'faceid-sandbox:3100',
      `127.0.0.1:${sandboxPort}`,
    );
    environment.REDIS_URL = (environment.REDIS_URL ?? '').replace('redis:6379', '127.0.0.1:6379');
    // Node refuses to start on a flag NODE_OPTIONS may not carry, so this also proves the image's flags start.
    service = await startChildService(
      { ...environment, ...imageRuntimeSettings(), PORT: '0', REDIS_KEY_PREFIX: `container-test-${process.pid}:` },
      path.join(folder, 'dist', 'server.js'),
    );

    const form = new FormData();
    form.append('comparison_type', '0');
    form.append('liveness_type', 'meglive');
    form.append('uuid', 'compose-user');
    form.append('image_ref1', new Blob([jpeg(64, 64)], { type: 'image/jpeg' }), 'face.jpg');
    const response = await fetch(`${service.url}/v1/biz-tokens`, { method: 'POST', body: form });
    expect(response.status).toBe(201);
    expect(((await response.json()) as { biz_token: string }).biz_token).toMatch(/^\d{10},/);
    const ready = (await (await fetch(`${service.url}/readyz`)).json()) as { checks: { redis: string } };
    expect(ready.checks.redis).toBe('ok');
  }, 30_000);
});

/** The runtime settings (glibc, V8) that the Dockerfile's final stage sets with ENV (values may be quoted). */
function imageRuntimeSettings(): { MALLOC_MMAP_THRESHOLD_: string; NODE_OPTIONS: string } {
  const lines = readFileSync(path.join(root, 'Dockerfile'), 'utf8')
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/);
  const stageStarts = lines.flatMap((line, index) => (/^\s*FROM\s/i.test(line) ? [index] : []));
  const finalStage = lines.slice(stageStarts.at(-1) ?? 0);
  const set = new Map<string, string>();
  for (const line of finalStage) {
    const env = /^\s*ENV\s+(.*)$/i.exec(line)?.[1] ?? '';
    for (const [, name = '', value = ''] of env.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
      set.set(name, value.startsWith('"') ? (JSON.parse(value) as string) : value);
    }
  }
  const settingOf = (name: string): string => {
    const value = set.get(name);
    if (value === undefined) throw new Error(`the Dockerfile's final stage sets no ${name}`);
    return value;
  };
  return { MALLOC_MMAP_THRESHOLD_: settingOf('MALLOC_MMAP_THRESHOLD_'), NODE_OPTIONS: settingOf('NODE_OPTIONS') };
}

async function waitFor(url: string): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt += 1) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} never answered`);
}
