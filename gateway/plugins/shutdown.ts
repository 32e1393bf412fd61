// A graceful close. Once close() is called, new requests get an OpenAI-shaped 503; in-flight
// generations get `drainMs` to finish, then their worker calls are cancelled (clients of a
// stream receive an error event) and channels close; close() then waits briefly for those
// responses to be written, so their keep-alive connections are idle — and closed at once —
// when the HTTP server stops, instead of holding it open for the keep-alive timeout.
import { serviceUnavailable } from '../errors.js';
import { sharedPlugin } from './shared.js';

const RESPONSE_FLUSH_MS = 2_000;

export const shutdownPlugin = sharedPlugin<{ drainMs: number }>('paraserve-shutdown', async (app, opts) => {
  let closing = false;
  let open = 0;
  let idle: (() => void) | null = null;

  app.addHook('onRequest', async (_request, reply) => {
    if (closing) throw serviceUnavailable('the gateway is shutting down', 'shutting_down');
    open += 1;
    reply.raw.once('close', () => {
      open -= 1;
      if (open === 0) idle?.();
    });
  });

  app.addHook('preClose', async () => {
    closing = true;
    await app.scheduler.drain(opts.drainMs);
    app.scheduler.close();
    app.cluster.close();
    if (open === 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, RESPONSE_FLUSH_MS);
      idle = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  });
});
