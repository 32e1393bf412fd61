// The live cluster as the gateway sees it: one entry per registered worker, kept current by
// that worker's WatchEvents stream. Workers come in through registration (POST /admin/workers);
// a broken stream marks the worker DOWN at once (the scheduler stops using it), the gateway
// tries to resume the stream for a short grace period, then forgets the worker.
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { FastifyBaseLogger } from 'fastify';
import type { WorkerEvent__Output } from '../../protos/generated/paraserve/v1/WorkerEvent.js';
import { WorkerChannel, isServiceError } from './worker-channel.js';
import { applySnapshot, registeredView, type WorkerStateName, type WorkerView } from './worker-view.js';

export interface WorkerRegistration {
  id: string;
  /** gRPC host:port the gateway dials. */
  address: string;
  backend: string;
}

export interface ClusterOptions {
  /** Deadline of the Health call made at registration. */
  healthTimeoutMs: number;
  /** How long registration waits for the first snapshot before answering anyway. */
  firstSnapshotTimeoutMs: number;
  /** How long a DOWN worker is kept (and its stream retried) before it is forgotten. */
  downGraceMs: number;
}

export const DEFAULT_CLUSTER_OPTIONS: ClusterOptions = {
  healthTimeoutMs: 5_000,
  firstSnapshotTimeoutMs: 5_000,
  downGraceMs: 15_000,
};

const FIRST_RESUME_DELAY_MS = 250;
const MAX_RESUME_DELAY_MS = 4_000;

/** Registration could not reach the worker's gRPC port, or its event stream failed at once. */
export class WorkerUnreachableError extends Error {
  override readonly name = 'WorkerUnreachableError';
}

/** The worker at the address says it is someone else. */
export class WorkerIdentityError extends Error {
  override readonly name = 'WorkerIdentityError';
}

interface Entry {
  view: WorkerView;
  channel: WorkerChannel;
  watch: ClientReadableStream<WorkerEvent__Output> | null;
  /** Bumped for every stream opened and on disposal; events of older streams are ignored. */
  epoch: number;
  dropTimer: NodeJS.Timeout | null;
  resumeTimer: NodeJS.Timeout | null;
  resumeDelayMs: number;
}

function describe(e: unknown): string {
  if (isServiceError(e)) return e.details || e.message;
  return e instanceof Error ? e.message : String(e);
}

export class ClusterState {
  private readonly entries = new Map<string, Entry>();
  private readonly listeners = new Set<() => void>();
  private closed = false;

  constructor(
    private readonly log: FastifyBaseLogger,
    private readonly opts: ClusterOptions,
  ) {}

  /**
   * Adds or replaces a worker; resolves once its first snapshot arrived (or the wait timed out).
   * A re-registration of a live worker at the same address keeps the existing stream: cancelling
   * it would make the worker register yet again.
   */
  async register(reg: WorkerRegistration): Promise<WorkerView> {
    if (this.closed) throw new WorkerUnreachableError('the gateway is shutting down');
    const existing = this.entries.get(reg.id);
    if (existing && existing.view.address === reg.address && existing.view.state !== 'DOWN') {
      await this.checkHealth(existing.channel, reg);
      existing.view = { ...existing.view, backend: reg.backend, lastSeenMs: Date.now() };
      return existing.view;
    }
    const channel = new WorkerChannel(reg.address);
    try {
      await this.checkHealth(channel, reg);
    } catch (e) {
      channel.close();
      throw e;
    }
    const current = this.entries.get(reg.id);
    if (current) this.dispose(current);
    const entry: Entry = {
      view: registeredView(reg.id, reg.address, reg.backend, Date.now()),
      channel,
      watch: null,
      epoch: 0,
      dropTimer: null,
      resumeTimer: null,
      resumeDelayMs: FIRST_RESUME_DELAY_MS,
    };
    this.entries.set(reg.id, entry);
    try {
      await this.openWatch(entry);
    } catch (e) {
      if (this.entries.get(reg.id) === entry) this.entries.delete(reg.id);
      this.dispose(entry);
      throw e;
    }
    this.log.info({ worker: reg.id, address: reg.address, state: entry.view.state }, 'worker registered');
    this.changed();
    return entry.view;
  }

  views(): WorkerView[] {
    return [...this.entries.values()].map((e) => e.view);
  }

  view(workerId: string): WorkerView | null {
    return this.entries.get(workerId)?.view ?? null;
  }

  /** The channel of a worker that is not DOWN; null otherwise. */
  channel(workerId: string): WorkerChannel | null {
    const e = this.entries.get(workerId);
    return e && e.view.state !== 'DOWN' ? e.channel : null;
  }

  countByState(): Record<WorkerStateName, number> {
    const counts: Record<WorkerStateName, number> = { STARTING: 0, READY: 0, DRAINING: 0, DRAINED: 0, DOWN: 0 };
    for (const e of this.entries.values()) counts[e.view.state] += 1;
    return counts;
  }

  /** Called after every change of any view (snapshot, DOWN, registration, removal). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) this.dispose(e);
    this.entries.clear();
    this.listeners.clear();
  }

  private async checkHealth(channel: WorkerChannel, reg: WorkerRegistration): Promise<void> {
    let workerId: string;
    try {
      workerId = (await channel.health(this.opts.healthTimeoutMs)).workerId;
    } catch (e) {
      throw new WorkerUnreachableError(`cannot reach worker '${reg.id}' at ${reg.address}: ${describe(e)}`);
    }
    if (workerId !== '' && workerId !== reg.id) {
      throw new WorkerIdentityError(`the worker at ${reg.address} reports id '${workerId}', not '${reg.id}'`);
    }
  }

  /** Resolves at the first event (or after firstSnapshotTimeoutMs); rejects if the stream fails first. */
  private openWatch(entry: Entry): Promise<void> {
    const epoch = ++entry.epoch;
    const call = entry.channel.watchEvents();
    entry.watch = call;
    const live = (): boolean => !this.closed && entry.epoch === epoch && this.entries.get(entry.view.id) === entry;
    return new Promise((resolve, reject) => {
      let settled = false;
      let ended = false;
      const settle = (): void => {
        settled = true;
        clearTimeout(timer);
      };
      const timer = setTimeout(() => {
        if (!settled) {
          settle();
          resolve();
        }
      }, this.opts.firstSnapshotTimeoutMs);
      call.on('data', (ev: WorkerEvent__Output) => {
        if (!live()) return;
        if (ev.snapshot) {
          entry.view = applySnapshot(entry.view, ev.snapshot, Date.now());
          this.clearTimers(entry);
          entry.resumeDelayMs = FIRST_RESUME_DELAY_MS;
          this.changed();
        } else {
          entry.view = { ...entry.view, lastSeenMs: Date.now() };
          if (ev.phase) this.log.debug({ worker: entry.view.id, phase: ev.phase }, 'worker load phase');
        }
        if (!settled) {
          settle();
          resolve();
        }
      });
      const lost = (why: string): void => {
        if (ended) return;
        ended = true;
        if (!settled) {
          settle();
          reject(new WorkerUnreachableError(`event stream of worker '${entry.view.id}' failed: ${why}`));
          return;
        }
        if (live()) this.markDown(entry, why);
      };
      call.on('error', (e: unknown) => lost(describe(e)));
      call.on('end', () => lost('the worker ended its event stream'));
    });
  }

  private markDown(entry: Entry, why: string): void {
    entry.watch = null;
    if (entry.view.state !== 'DOWN') {
      this.log.warn({ worker: entry.view.id, address: entry.view.address, reason: why }, 'worker down');
      entry.view = { ...entry.view, state: 'DOWN' };
      this.changed();
    }
    if (!entry.dropTimer) {
      entry.dropTimer = setTimeout(() => this.drop(entry), this.opts.downGraceMs);
      entry.dropTimer.unref();
    }
    this.scheduleResume(entry);
  }

  private scheduleResume(entry: Entry): void {
    if (entry.resumeTimer) return;
    const delay = entry.resumeDelayMs;
    entry.resumeDelayMs = Math.min(delay * 2, MAX_RESUME_DELAY_MS);
    entry.resumeTimer = setTimeout(() => {
      entry.resumeTimer = null;
      if (this.closed || this.entries.get(entry.view.id) !== entry) return;
      this.openWatch(entry).catch(() => {
        if (!this.closed && this.entries.get(entry.view.id) === entry && entry.view.state === 'DOWN') {
          this.scheduleResume(entry);
        }
      });
    }, delay);
    entry.resumeTimer.unref();
  }

  private drop(entry: Entry): void {
    entry.dropTimer = null;
    if (this.entries.get(entry.view.id) !== entry || entry.view.state !== 'DOWN') return;
    this.entries.delete(entry.view.id);
    this.dispose(entry);
    this.log.info({ worker: entry.view.id }, 'worker removed after grace period');
    this.changed();
  }

  private clearTimers(entry: Entry): void {
    if (entry.dropTimer) clearTimeout(entry.dropTimer);
    if (entry.resumeTimer) clearTimeout(entry.resumeTimer);
    entry.dropTimer = null;
    entry.resumeTimer = null;
  }

  private dispose(entry: Entry): void {
    entry.epoch += 1;
    this.clearTimers(entry);
    entry.watch?.cancel();
    entry.watch = null;
    entry.channel.close();
  }

  private changed(): void {
    for (const l of this.listeners) l();
  }
}
