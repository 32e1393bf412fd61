// The model store: a plain HTTP file server over a directory of model folders, so that workers
// on other machines (or other processes of `paraserve up`) can fetch checkpoints with ranged
// GETs exactly as they would from any object store or CDN. @fastify/send does Range, If-Range,
// ETag, HEAD and path normalisation; this module only chooses safe options: no directory
// listing, no index files, no dotfiles (so half-written `.name.tmp-*` folders are never
// served), and no path may leave the root. It reads files in 1 MiB pieces: with the usual
// 64 KiB ones a 7B checkpoint's stages, fetched by several workers at once, came out of one
// store process at under 1 GB/s in all (measured on the GPU machine), below the links the
// cold-start benchmark emulates; @fastify/static offers no way to set the piece size.
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import send from '@fastify/send';
import Fastify from 'fastify';

/** Size of the pieces files are read and written to the socket in. */
const READ_PIECE_BYTES = 1 << 20;

export interface StoreOptions {
  /** Directory whose files are served; must exist. */
  root: string;
  host: string;
  /** 0 picks a free port; `url` then tells which. */
  port: number;
}

export interface RunningStore {
  /** Base URL without a trailing slash, e.g. http://127.0.0.1:41234 */
  url: string;
  /** Stops accepting connections and waits for open responses to end. */
  close(): Promise<void>;
}

export class StoreRootError extends Error {
  override name = 'StoreRootError';
}

/** logLevel: pino level for request logs; null keeps the store silent (inside `paraserve up`). */
export async function startStore(opts: StoreOptions, logLevel: string | null = null): Promise<RunningStore> {
  const root = resolve(opts.root);
  const info = await stat(root).catch(() => null);
  if (info === null || !info.isDirectory()) {
    throw new StoreRootError(`store root ${root} is not a directory`);
  }
  const app = Fastify({
    logger: logLevel === null ? false : { level: logLevel },
    // Model files are fetched in long ranged reads; never cut a slow transfer short.
    connectionTimeout: 0,
  });
  const sendOptions = {
    root,
    index: false as const,
    dotfiles: 'ignore' as const,
    acceptRanges: true,
    etag: true,
    lastModified: true,
    cacheControl: false,
    highWaterMark: READ_PIECE_BYTES,
  };
  app.route({
    method: ['GET', 'HEAD'],
    url: '/*',
    handler: async (request, reply) => {
      // send URI-decodes the path itself, so it gets the raw (still encoded) one.
      const result = await send(request.raw, new URL(request.url, 'http://store').pathname, sendOptions);
      // Directories and dotfiles are simply not there; other answers (416 with its
      // Content-Range, 403 for paths that leave the root) are send's own.
      if (result.type === 'directory' || (result.type === 'error' && result.statusCode === 404)) {
        return reply.code(404).send({ error: 'not found' });
      }
      return reply.code(result.statusCode).headers(result.headers).send(result.stream);
    },
  });
  await app.listen({ host: opts.host, port: opts.port });
  const address = app.server.address();
  if (address === null || typeof address === 'string') {
    await app.close();
    throw new StoreRootError('store did not bind a TCP port');
  }
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    close: async () => {
      await app.close();
    },
  };
}
