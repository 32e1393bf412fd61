// Waiting on a promise no longer than a signal allows, for work that cannot be cancelled
// itself (a native call, another request's load): the worker's loader and the gateway's
// scheduler loop both give up on it this way and let it finish unobserved.

/** What p resolves to or rejects with; as soon as the signal aborts, a rejection with reason() instead. */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal, reason: () => unknown = () => signal.reason): Promise<T> {
  if (signal.aborted) return Promise.reject(reason() as Error);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(reason() as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e as Error);
      },
    );
  });
}
