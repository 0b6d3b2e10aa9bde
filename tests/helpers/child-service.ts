import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import supertest from 'supertest';

export const SERVER_ENTRY = path.join(__dirname, '..', '..', 'dist', 'server.js');

export interface ChildService {
  process: ChildProcess;
  port: number;
  url: string;
  /** Everything the process wrote to stdout so far. */
  output: () => string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

/**
 * Runs the built service (dist/server.js, built by the jest global setup) as a real process on PORT=0
 * and waits for its "listening" log line to learn the port.
 */
export async function startChildService(env: Record<string, string>, entry = SERVER_ENTRY): Promise<ChildService> {
  const child = spawn(process.execPath, [entry], {
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start:\n${stdout}\n${stderr}`)), 10_000);
    const check = (): void => {
      const line = stdout.split('\n').find((text) => text.includes('"faceid-token-service listening"'));
      if (line !== undefined) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { port: number }).port);
      }
    };
    child.stdout?.on('data', check);
    void exited.then((code) => reject(new Error(`service exited with ${code}:\n${stdout}\n${stderr}`)));
  });
  return {
    process: child,
    port,
    url: `http://127.0.0.1:${port}`,
    output: () => stdout,
    exited,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** The child as a target of the shared request helpers (`postToken`). */
export const targetOf = (child: ChildService): { http: () => supertest.Agent } => ({
  http: () => supertest.agent(child.url),
});
