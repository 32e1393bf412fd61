// The decisions of `paraserve up`, as pure functions: which processes to start with which
// arguments, in what order to stop them, what to do about an existing registration of the
// demo model, and what to print. commands/up.ts carries them out.
import type { ModelRecord } from './admin-client.js';

export interface UpPlanInput {
  host: string;
  port: number;
  workers: number;
  dataDir: string;
  backend: 'auto' | 'cpu' | 'cuda';
  logLevel: string;
}

/** How long each kind of child may take to stop after SIGTERM before it gets SIGKILL. */
export const STOP_GRACE_MS = { worker: 15_000, gateway: 10_000 } as const;
/** Workers finish in-flight requests for at most this long when `up` stops. */
export const WORKER_DRAIN_MS = 10_000;
/** Deadlines for the cluster to come up (a first CPU model load included). */
export const READY_TIMEOUT_MS = { gateway: 60_000, worker: 120_000 } as const;

export function workerId(index: number): string {
  return `worker-${index}`;
}

export function gatewayArgs(p: UpPlanInput): string[] {
  return ['gateway', '--host', p.host, '--port', String(p.port), '--data-dir', p.dataDir, '--log-level', p.logLevel];
}

export function workerArgs(p: UpPlanInput, index: number, gatewayUrl: string): string[] {
  return [
    'worker',
    '--gateway', gatewayUrl,
    '--id', workerId(index),
    '--host', '127.0.0.1',
    '--port', '0',
    '--backend', p.backend,
    '--drain-timeout-ms', String(WORKER_DRAIN_MS),
    '--log-level', p.logLevel,
  ];
}

export type RegistrationDecision =
  /** Registered from exactly this source: nothing to do. */
  | { kind: 'keep' }
  /** Not registered: hash and register. */
  | { kind: 'register' }
  /** Registered from an earlier `up`'s store (another ephemeral port): re-register here. */
  | { kind: 'replace'; reuseDigests: boolean }
  /** Registered by the operator from elsewhere: leave it alone. */
  | { kind: 'foreign'; source: string };

/**
 * What to do about the demo model's registration. `modelGenerated`: the files were just
 * written, so digests recorded by an earlier registration may not describe them.
 */
export function decideRegistration(existing: ModelRecord | null, source: string, modelGenerated: boolean): RegistrationDecision {
  if (existing === null) return { kind: 'register' };
  if (existing.source === source) return modelGenerated ? { kind: 'replace', reuseDigests: false } : { kind: 'keep' };
  const dir = new URL(source).pathname;
  const previousStore = /^http:\/\/127\.0\.0\.1:\d+(\/.*)$/.exec(existing.source);
  if (previousStore !== null && previousStore[1] === dir) {
    return { kind: 'replace', reuseDigests: !modelGenerated };
  }
  return { kind: 'foreign', source: existing.source };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A chat completion request to paste into a shell. */
export function curlLine(gatewayUrl: string, model: string, needsKey: boolean): string {
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 32 });
  const auth = needsKey ? ` -H ${shellQuote('authorization: Bearer <your API key>')}` : '';
  return `curl ${gatewayUrl}/v1/chat/completions -H ${shellQuote('content-type: application/json')}${auth} -d ${shellQuote(body)}`;
}
