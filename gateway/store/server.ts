// The model store: a plain HTTP file server over a directory of model folders, so that workers
// on other machines (or other processes of `paraserve up`) can fetch checkpoints with ranged
// GETs exactly as they would from any object store or CDN. @fastify/static (through
// @fastify/send) does Range, If-Range, ETag, HEAD and path normalisation; this module only
// chooses safe options: no directory listing, no index files, no dotfiles (so half-written
// `.name.tmp-*` folders are never served), and no path may leave the root.
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import fastifyStatic from '@fastify/static';
import Fastify from 'fastify';

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
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    index: false,
    list: false,
    redirect: false,
    dotfiles: 'ignore',
    serveDotFiles: false,
    acceptRanges: true,
    etag: true,
    lastModified: true,
    cacheControl: false,
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
