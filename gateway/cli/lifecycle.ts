// The life of a daemon command (`paraserve gateway`, `paraserve worker`, `store serve`):
// announce readiness to `paraserve up` through the Node IPC channel when it started us (under
// systemd the gateway and worker send READY=1 themselves, once serving), then wait for the
// signal to stop. A second signal while
// stopping ends the process at once; a lost parent (`paraserve up` killed) stops it too.
// Signals within REPEAT_WINDOW_MS of the first count as one: `npx` forwards the terminal's
// SIGINT to a process that the terminal already sent it to.

/** What a daemon started by `paraserve up` sends its parent once it serves. */
export interface ReadyMessage {
  type: 'paraserve:ready';
  role: 'gateway' | 'worker' | 'store';
  /** Base URL, for HTTP servers. */
  url: string | null;
  /** Worker id and gRPC address, for workers. */
  id: string | null;
  address: string | null;
}

export function isReadyMessage(m: unknown): m is ReadyMessage {
  return typeof m === 'object' && m !== null && (m as { type?: unknown }).type === 'paraserve:ready';
}

/** Tells a `paraserve up` parent that the daemon serves; a no-op without one. */
export function announceReady(msg: ReadyMessage): void {
  if (process.send !== undefined) {
    process.send(msg);
  }
}

export const REPEAT_WINDOW_MS = 1000;

/** Resolves with the reason to stop: a signal, or the `paraserve up` parent going away. */
export function waitForStop(): Promise<string> {
  return new Promise((resolve) => {
    const stop = (reason: string): void => {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      process.off('disconnect', onDisconnect);
      const firstAt = Date.now();
      const force = (signal: NodeJS.Signals): void => {
        if (Date.now() - firstAt < REPEAT_WINDOW_MS) return;
        process.stderr.write(`paraserve: ${signal} again while stopping; exiting now\n`);
        process.exit(1);
      };
      process.on('SIGTERM', force);
      process.on('SIGINT', force);
      resolve(reason);
    };
    const onTerm = (): void => stop('SIGTERM');
    const onInt = (): void => stop('SIGINT');
    const onDisconnect = (): void => stop('parent exited');
    process.once('SIGTERM', onTerm);
    process.once('SIGINT', onInt);
    if (process.send !== undefined) {
      process.once('disconnect', onDisconnect);
    }
  });
}
