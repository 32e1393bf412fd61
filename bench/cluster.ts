// What the cluster benchmarks share: the processes of a cluster (store, gateway, workers)
// started through the CLI under one Supervisor on loopback, the admin API with the bench's
// token, bounded polling of the gateway's view, a streamed completion timed by the client
// (TTFT = when the first SSE event reaches it), and the percentiles the tables report.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { Supervisor, type SupervisedChild } from '../gateway/cli/supervisor.js';

export const ADMIN_TOKEN = 'bench-admin';
export const STEP_TIMEOUT_MS = 60_000;

const http = new Agent({ connections: 256 });
const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

export interface BenchProcesses {
  /** Starts `paraserve <args>` with extra environment; its log goes to dir/<name>.log. */
  start(name: string, args: string[], env: NodeJS.ProcessEnv): SupervisedChild;
  /** Stops the given children (default: every child still running), newest first. */
  stop(children?: SupervisedChild[]): Promise<void>;
}

/**
 * A supervisor whose children end the benchmark when one of them dies unexpectedly. With
 * PARASERVE_BENCH_CPU_PROFILE set to a directory, every child writes a V8 CPU profile there
 * when it exits (node --cpu-prof), to see where a process spends its time.
 */
export function benchProcesses(dir: string): BenchProcesses {
  const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'gateway', 'cli', 'main.js');
  const profileDir = process.env['PARASERVE_BENCH_CPU_PROFILE'];
  const nodeArgs = profileDir === undefined || profileDir === '' ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`];
  const supervisor = new Supervisor([...nodeArgs, cli], (child, exit) => {
    console.error(`${child.name} exited unexpectedly (${JSON.stringify(exit)}); log: ${child.logFile}`);
    supervisor.killAll();
    process.exit(1);
  });
  const running: SupervisedChild[] = [];
  return {
    start(name, args, env) {
      const child = supervisor.start({
        name,
        args,
        env: { ...process.env, PARASERVE_ADMIN_TOKEN: ADMIN_TOKEN, ...env },
        logFile: path.join(dir, `${name}.log`),
      });
      running.push(child);
      return child;
    },
    async stop(children) {
      const chosen = children ?? [...running];
      for (const child of [...chosen].reverse()) {
        await supervisor.stop(child, 10_000);
        running.splice(running.indexOf(child), 1);
      }
    },
  };
}

export async function getJson<T>(url: string): Promise<T> {
  const res = await request(url, { dispatcher: http, headers: auth });
  if (res.statusCode !== 200) throw new Error(`GET ${url}: ${res.statusCode} ${await res.body.text()}`);
  return (await res.body.json()) as T;
}

export async function postJson<T>(url: string, body: unknown, expected: number): Promise<T> {
  const res = await request(url, { method: 'POST', dispatcher: http, headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (res.statusCode !== expected) throw new Error(`POST ${url}: ${res.statusCode} ${await res.body.text()}`);
  return (await res.body.json()) as T;
}

/** Polls until the probe answers (bounded by timeoutMs). */
export async function waitFor<T>(what: string, probe: () => Promise<T | null>, timeoutMs = STEP_TIMEOUT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface Completion {
  /** performance.now() when the request was sent. */
  startedAt: number;
  status: number;
  /** null unless status is 200 and an event arrived. */
  ttftMs: number | null;
  totalMs: number;
  requestId: string | null;
  headers: Record<string, string>;
  /** The error body for a status other than 200. */
  error: string | null;
}

/** One streamed /v1/completions call; never throws for an HTTP error status (see status). */
export async function streamCompletion(gatewayUrl: string, body: Record<string, unknown>): Promise<Completion> {
  const startedAt = performance.now();
  const res = await request(`${gatewayUrl}/v1/completions`, {
    method: 'POST',
    dispatcher: http,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
    headersTimeout: STEP_TIMEOUT_MS,
    bodyTimeout: STEP_TIMEOUT_MS,
  });
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(res.headers)) if (typeof value === 'string') headers[name] = value;
  const requestId = headers['x-paraserve-request-id'] ?? null;
  if (res.statusCode !== 200) {
    const error = await res.body.text();
    return { startedAt, status: res.statusCode, ttftMs: null, totalMs: performance.now() - startedAt, requestId, headers, error };
  }
  let ttftMs: number | null = null;
  let text = '';
  for await (const chunk of res.body) {
    text += (chunk as Buffer).toString('utf8');
    if (ttftMs === null && /^data: \{/m.test(text)) ttftMs = performance.now() - startedAt;
  }
  const finished = text.includes('data: [DONE]');
  return {
    startedAt,
    status: finished ? 200 : 502,
    ttftMs,
    totalMs: performance.now() - startedAt,
    requestId,
    headers,
    error: finished ? null : `the stream did not finish: ${text.slice(-200)}`,
  };
}

export async function closeBenchHttp(): Promise<void> {
  await http.close();
}

/** Bytes [0, size) in `count` contiguous parts of equal length (the last may be shorter), none empty. */
export function splitRange(size: number, count: number): (readonly [number, number])[] {
  const per = Math.ceil(size / count);
  return Array.from({ length: count }, (_, i) => [i * per, Math.min(size, (i + 1) * per)] as const).filter(([from, to]) => from < to);
}

/** Nearest-rank percentile: the element at floor(q·n) of the sorted values (the last for q near 1); null when empty. */
export function percentile(values: readonly number[], q: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}
