// Telling the gateway this worker exists: POST {gatewayUrl}/admin/workers with the worker's id,
// gRPC address and backend, retried with capped exponential backoff until accepted. The
// gateway then opens a WatchEvents stream; when every such stream has been gone for a grace
// period (the gateway restarted or lost us), the worker registers again so the gateway
// reconnects. The backoff schedule is a pure function; this module owns the timers.
import type { Logger } from 'pino';
import { request } from 'undici';

/** The body of the registration request (CONTRACTS.md). */
export interface RegistrationBody {
  id: string;
  address: string;
  backend: string;
}

export interface RegistrationOptions {
  gatewayUrl: string;
  body: RegistrationBody;
  /** Sent as `authorization: Bearer <token>` when not null (PARASERVE_ADMIN_TOKEN). */
  adminToken: string | null;
  logger: Logger;
  initialBackoffMs: number;
  maxBackoffMs: number;
  /** How long no WatchEvents stream may exist before registering again. */
  rewatchGraceMs: number;
  /** Per-attempt limit on the HTTP exchange. */
  requestTimeoutMs: number;
}

/** Pure: the wait before retry number `attempt` (0-based): doubling from initial, capped. */
export function backoffMs(attempt: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
}

export class GatewayRegistration {
  private readonly options: RegistrationOptions;
  private readonly stop = new AbortController();
  private loop: Promise<void> | null = null;
  private graceTimer: NodeJS.Timeout | null = null;
  private registrations = 0;

  constructor(options: RegistrationOptions) {
    this.options = options;
  }

  /** Times the gateway accepted this worker so far. */
  get accepted(): number {
    return this.registrations;
  }

  /**
   * Registers now, or joins the registration under way; resolves once the gateway accepted
   * or close() was called.
   */
  register(): Promise<void> {
    if (this.stop.signal.aborted) return Promise.resolve();
    this.loop ??= this.registerUntilAccepted().finally(() => {
      this.loop = null;
    });
    return this.loop;
  }

  /**
   * Feed with the number of WatchEvents streams whenever it changes: dropping to zero starts
   * the grace timer, a new stream cancels it.
   */
  watchersChanged(count: number): void {
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    if (count > 0 || this.stop.signal.aborted) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = null;
      this.options.logger.info('no gateway is watching this worker; registering again');
      void this.register();
    }, this.options.rewatchGraceMs);
  }

  /** Stops retrying and re-registering; resolves once no attempt is in flight. */
  async close(): Promise<void> {
    this.stop.abort();
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    await this.loop;
  }

  private async registerUntilAccepted(): Promise<void> {
    const { logger, initialBackoffMs, maxBackoffMs } = this.options;
    for (let attempt = 0; !this.stop.signal.aborted; attempt++) {
      const problem = await this.attempt();
      if (problem === null) {
        this.registrations++;
        logger.info({ gateway: this.options.gatewayUrl, attempts: attempt + 1 }, 'registered with the gateway');
        return;
      }
      const wait = backoffMs(attempt, initialBackoffMs, maxBackoffMs);
      logger.warn({ gateway: this.options.gatewayUrl, problem, retryInMs: wait }, 'gateway registration failed');
      await sleep(wait, this.stop.signal);
    }
  }

  /** One POST; null when accepted, else what went wrong. */
  private async attempt(): Promise<string | null> {
    const url = new URL('admin/workers', this.options.gatewayUrl.endsWith('/') ? this.options.gatewayUrl : `${this.options.gatewayUrl}/`);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.options.adminToken !== null) headers['authorization'] = `Bearer ${this.options.adminToken}`;
    try {
      const res = await request(url, {
        method: 'POST',
        headers,
        body: JSON.stringify(this.options.body),
        signal: AbortSignal.any([this.stop.signal, AbortSignal.timeout(this.options.requestTimeoutMs)]),
      });
      const text = await res.body.text();
      if (res.statusCode >= 200 && res.statusCode < 300) return null;
      return `HTTP ${res.statusCode}: ${text.slice(0, 500)}`;
    } catch (e) {
      return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
