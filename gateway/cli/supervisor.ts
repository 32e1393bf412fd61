// Child processes of `paraserve up`: each daemon (gateway, workers) runs as its own
// `paraserve <command>` process in its own process group — so a Ctrl-C reaches only `up`,
// which then stops them in order — with stdout and stderr going to a log file, and readiness
// reported over the Node IPC channel. A child that exits while nobody asked it to is reported
// through onUnexpectedExit; a child whose parent dies stops itself (see lifecycle.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { isReadyMessage, type ReadyMessage } from './lifecycle.js';

export interface ChildSpec {
  /** Shown to the operator: "gateway", "worker-0". */
  name: string;
  /** Arguments after the CLI path, e.g. ["worker", "--gateway", url]. */
  args: string[];
  env: NodeJS.ProcessEnv;
  logFile: string;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SupervisedChild {
  readonly name: string;
  readonly logFile: string;
  /** Process id; undefined when the process could not be started. */
  readonly pid: number | undefined;
  /** Resolves with the child's ready message; rejects if it exits first or misses the deadline. */
  ready(timeoutMs: number): Promise<ReadyMessage>;
  readonly exited: Promise<ExitInfo>;
  /** The line that best says why the child failed: its last `paraserve:` line, else its last line. */
  lastWords(): string | null;
}

export class ChildFailedError extends Error {
  override name = 'ChildFailedError';
}

const TAIL_LINES = 20;

export type UnexpectedExitHandler = (child: SupervisedChild, exit: ExitInfo) => void;

export class Supervisor {
  private readonly children = new Map<SupervisedChild, { proc: ChildProcess; stopping: boolean; done: boolean }>();

  /** cliArgs: how to start this CLI again — node flags and script path. */
  constructor(
    private readonly cliArgs: string[],
    private readonly onUnexpectedExit: UnexpectedExitHandler,
  ) {}

  start(spec: ChildSpec): SupervisedChild {
    const proc = spawn(process.execPath, [...this.cliArgs, ...spec.args], {
      env: spec.env,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      detached: true,
    });
    const log = createWriteStream(spec.logFile, { flags: 'w' });
    const tail: string[] = [];
    let partial = '';
    proc.stdout?.pipe(log, { end: false });
    proc.stderr?.on('data', (chunk: Buffer) => {
      log.write(chunk);
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      tail.push(...lines.filter((l) => l.trim() !== ''));
      tail.splice(0, Math.max(0, tail.length - TAIL_LINES));
    });

    let readyMessage: ReadyMessage | null = null;
    const readyWaiters: ((m: ReadyMessage) => void)[] = [];
    proc.on('message', (m: unknown) => {
      if (isReadyMessage(m) && readyMessage === null) {
        readyMessage = m;
        readyWaiters.splice(0).forEach((w) => w(m));
      }
    });

    const exited = new Promise<ExitInfo>((resolve) => {
      proc.on('error', () => resolve({ code: null, signal: null }));
      proc.on('close', (code, signal) => {
        if (partial.trim() !== '') tail.push(partial);
        log.end();
        resolve({ code, signal });
      });
    });

    const lastWords = (): string | null =>
      [...tail].reverse().find((l) => l.startsWith('paraserve:'))?.replace(/^paraserve:\s*/, '') ?? tail[tail.length - 1] ?? null;

    const child: SupervisedChild = {
      name: spec.name,
      logFile: spec.logFile,
      pid: proc.pid,
      exited,
      lastWords,
      ready: (timeoutMs) =>
        new Promise<ReadyMessage>((resolve, reject) => {
          if (readyMessage !== null) {
            resolve(readyMessage);
            return;
          }
          const timer = setTimeout(() => {
            reject(new ChildFailedError(`${spec.name} was not ready after ${Math.round(timeoutMs / 1000)} s (log: ${spec.logFile})`));
          }, timeoutMs);
          readyWaiters.push((m) => {
            clearTimeout(timer);
            resolve(m);
          });
          void exited.then((exit) => {
            clearTimeout(timer);
            const why = lastWords();
            reject(new ChildFailedError(`${spec.name} exited before it was ready (${describeExit(exit)})${why === null ? '' : `: ${why}`} (log: ${spec.logFile})`));
          });
        }),
    };
    const entry = { proc, stopping: false, done: false };
    this.children.set(child, entry);
    void exited.then((exit) => {
      entry.done = true;
      if (!entry.stopping) this.onUnexpectedExit(child, exit);
    });
    return child;
  }

  /** SIGTERM, then SIGKILL if the child has not exited after graceMs. */
  async stop(child: SupervisedChild, graceMs: number): Promise<ExitInfo> {
    const entry = this.children.get(child);
    if (entry === undefined) throw new Error(`unknown child ${child.name}`);
    entry.stopping = true;
    if (!entry.done) {
      entry.proc.kill('SIGTERM');
      const timer = setTimeout(() => entry.proc.kill('SIGKILL'), graceMs);
      await child.exited;
      clearTimeout(timer);
    }
    return child.exited;
  }

  /** SIGKILL to every child still running; for a second Ctrl-C. */
  killAll(): void {
    for (const entry of this.children.values()) {
      entry.stopping = true;
      if (!entry.done) entry.proc.kill('SIGKILL');
    }
  }
}

export function describeExit(exit: ExitInfo): string {
  if (exit.signal !== null) return `signal ${exit.signal}`;
  if (exit.code !== null) return `code ${exit.code}`;
  return 'failed to start';
}
