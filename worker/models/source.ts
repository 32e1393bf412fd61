// Where a model's bytes come from. Everything above this module (header parsing, inspection,
// the worker's fetcher) reads through ModelSourceReader, so a model behaves the same whether
// it sits in a local directory or behind any HTTP server that honours Range requests (such
// as `paraserve store serve`). Ranged reads are the point: a pipeline stage fetches only its
// own tensors, and headers are read without touching the weights.
import { createReadStream } from 'node:fs';
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Dispatcher, getGlobalDispatcher, interceptors, request } from 'undici';
import { ModelFormatError } from './errors.js';
import { openS3Source } from './source-s3.js';

/**
 * Read access to the files of one model directory. Paths are relative to `uri` ("config.json",
 * "model-00001-of-00002.safetensors"). Every failure is a ModelFormatError whose `file` is the
 * path: code 'missing_file' when the file is not there, 'unreachable' when the source could
 * not be read (connection refused, timeout, connection lost mid-body), 'invalid' for bad
 * arguments or short files. Aborting a stream rejects with the signal's reason.
 */
export interface ModelSourceReader {
  readonly uri: string;
  /** Size of the file in bytes. */
  size(path: string): Promise<number>;
  /** The whole file; meant for small files (JSON, headers). */
  readFile(path: string): Promise<Uint8Array>;
  /** Bytes [start, end) of the file; fails when the file ends before `end`. */
  readRange(path: string, start: number, end: number): Promise<Uint8Array>;
  /**
   * Streams bytes [start, end) in chunks as they arrive, without holding the range in memory;
   * `offset` is the absolute file offset of each chunk. The next chunk is read only after
   * onChunk's promise settles. Resolves once all end - start bytes were delivered.
   */
  streamRange(
    path: string,
    start: number,
    end: number,
    onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>,
    signal: AbortSignal | null,
  ): Promise<void>;
}

export interface ModelSourceOptions {
  /** HTTP and S3: longest wait for a connection or response headers, and between two body chunks. */
  timeoutMs: number;
}

export const DEFAULT_SOURCE_OPTIONS: ModelSourceOptions = { timeoutMs: 30_000 };

const FILE_CHUNK_BYTES = 1 << 20;

/** Opens a model directory: file:///dir, http://host/dir, https://host/dir or s3://bucket/prefix. */
export function openModelSource(uri: string, options: ModelSourceOptions | null = null): ModelSourceReader {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new ModelFormatError(`invalid model source URI ${JSON.stringify(uri)}`, null, 'invalid');
  }
  const opts = options ?? DEFAULT_SOURCE_OPTIONS;
  switch (url.protocol) {
    case 'file:':
      return new FileSource(uri, fileURLToPath(url));
    case 'http:':
    case 'https:':
      return new HttpSource(uri, url, opts);
    case 's3:':
      return openS3Source(uri, url, opts);
    default:
      throw new ModelFormatError(
        `unsupported source scheme ${url.protocol.replace(/:$/, '')}:// in ${uri} (supported: file://, http://, https://, s3://)`,
        null,
        'unsupported',
      );
  }
}

/** A path inside the model directory: relative, no "." or ".." segments. */
export function isSafeRelativePath(path: string): boolean {
  return (
    path.length > 0 &&
    !path.startsWith('/') &&
    !path.includes('\\') &&
    !path.includes('\0') &&
    path.split('/').every((part) => part !== '' && part !== '.' && part !== '..')
  );
}

export function checkPath(path: string): void {
  if (!isSafeRelativePath(path)) {
    throw new ModelFormatError(`invalid model file path ${JSON.stringify(path)}`, path, 'invalid');
  }
}

export function checkRange(path: string, start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new ModelFormatError(`invalid byte range [${start}, ${end}) of ${path}`, path, 'invalid');
  }
}

/** readRange for sources that stream: the streamed chunks of [start, end) in one array. */
export async function collectRange(source: ModelSourceReader, path: string, start: number, end: number): Promise<Uint8Array> {
  checkRange(path, start, end);
  const out = new Uint8Array(end - start);
  await source.streamRange(path, start, end, (chunk, offset) => out.set(chunk, offset - start), null);
  return out;
}

export function missing(path: string, uri: string): ModelFormatError {
  return new ModelFormatError(`missing file ${path} at ${uri}`, path, 'missing_file');
}

export function shortRead(path: string, uri: string, start: number, end: number, got: number): ModelFormatError {
  return new ModelFormatError(
    `short read of ${path} at ${uri}: got ${got} of the ${end - start} bytes [${start}, ${end}) (file truncated?)`,
    path,
    'invalid',
  );
}

export function errorCode(e: unknown): string | null {
  if (typeof e !== 'object' || e === null) return null;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  return errorCode((e as { cause?: unknown }).cause);
}

class FileSource implements ModelSourceReader {
  constructor(
    readonly uri: string,
    private readonly dir: string,
  ) {}

  private resolve(path: string): string {
    checkPath(path);
    return join(this.dir, path);
  }

  private fsError(e: unknown, path: string): Error {
    const code = errorCode(e);
    if (code === 'ENOENT' || code === 'ENOTDIR') return missing(path, this.uri);
    return new ModelFormatError(`cannot read ${path} at ${this.uri}: ${e instanceof Error ? e.message : String(e)}`, path, 'unreachable', { cause: e });
  }

  async size(path: string): Promise<number> {
    const full = this.resolve(path);
    try {
      const st = await stat(full);
      if (!st.isFile()) throw new ModelFormatError(`${path} at ${this.uri} is not a file`, path, 'invalid');
      return st.size;
    } catch (e) {
      if (e instanceof ModelFormatError) throw e;
      throw this.fsError(e, path);
    }
  }

  async readFile(path: string): Promise<Uint8Array> {
    const full = this.resolve(path);
    try {
      return new Uint8Array(await readFile(full));
    } catch (e) {
      throw this.fsError(e, path);
    }
  }

  async readRange(path: string, start: number, end: number): Promise<Uint8Array> {
    const full = this.resolve(path);
    checkRange(path, start, end);
    const out = new Uint8Array(end - start);
    let handle: FileHandle;
    try {
      handle = await open(full, 'r');
    } catch (e) {
      throw this.fsError(e, path);
    }
    try {
      let filled = 0;
      while (filled < out.length) {
        const { bytesRead } = await handle.read(out, filled, out.length - filled, start + filled);
        if (bytesRead === 0) throw shortRead(path, this.uri, start, end, filled);
        filled += bytesRead;
      }
      return out;
    } catch (e) {
      if (e instanceof ModelFormatError) throw e;
      throw this.fsError(e, path);
    } finally {
      await handle.close();
    }
  }

  async streamRange(
    path: string,
    start: number,
    end: number,
    onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>,
    signal: AbortSignal | null,
  ): Promise<void> {
    const full = this.resolve(path);
    checkRange(path, start, end);
    signal?.throwIfAborted();
    if (end === start) return;
    const stream = createReadStream(full, {
      start,
      end: end - 1,
      highWaterMark: FILE_CHUNK_BYTES,
      ...(signal === null ? {} : { signal }),
    });
    const delivered = await pump(stream, start, end, onChunk, signal, (e) => this.fsError(e, path), this.overrun(path, start, end));
    if (delivered !== end) throw shortRead(path, this.uri, start, end, delivered - start);
  }

  private overrun(path: string, start: number, end: number): () => Error {
    return () => new ModelFormatError(`${path} at ${this.uri} yielded more than the ${end - start} bytes asked`, path, 'invalid');
  }
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

interface ContentRange {
  first: number;
  last: number;
  total: number | null;
}

/** Pure: parses a Content-Range response header ("bytes 0-99/1234"); null when malformed. */
export function parseContentRange(value: string | null): ContentRange | null {
  const m = value === null ? null : CONTENT_RANGE.exec(value.trim());
  if (m === null) return null;
  return { first: Number(m[1]), last: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) };
}

function header(headers: Record<string, string | string[] | undefined>, name: string): string | null {
  const value = headers[name];
  if (value === undefined) return null;
  return Array.isArray(value) ? (value[0] ?? null) : value;
}

/** A 416 answer names the size in its Content-Range ("bytes *" + "/12"). */
function unsatisfiedRangeTotal(headers: Record<string, string | string[] | undefined>): number | null {
  const m = /^bytes \*\/(\d+)$/.exec(header(headers, 'content-range')?.trim() ?? '');
  return m === null ? null : Number(m[1]);
}

type HttpResponse = Dispatcher.ResponseData;

class HttpSource implements ModelSourceReader {
  private readonly base: URL;
  private readonly dispatcher: Dispatcher;

  constructor(
    readonly uri: string,
    url: URL,
    private readonly options: ModelSourceOptions,
  ) {
    this.base = new URL(url.href.endsWith('/') ? url.href : `${url.href}/`);
    this.dispatcher = getGlobalDispatcher().compose(interceptors.redirect({ maxRedirections: 5 }));
  }

  private urlFor(path: string): URL {
    checkPath(path);
    return new URL(path.split('/').map(encodeURIComponent).join('/'), this.base);
  }

  private transportError(e: unknown, path: string, progress: string): Error {
    const code = errorCode(e);
    const host = this.base.host;
    const what = `${path} at ${this.uri}`;
    let message: string;
    switch (code) {
      case 'ECONNREFUSED':
        message = `cannot connect to ${host} (connection refused) reading ${what}`;
        break;
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        message = `cannot resolve host ${this.base.hostname} reading ${what}`;
        break;
      case 'UND_ERR_CONNECT_TIMEOUT':
      case 'UND_ERR_HEADERS_TIMEOUT':
      case 'UND_ERR_BODY_TIMEOUT':
        message = `timed out after ${this.options.timeoutMs} ms reading ${what}${progress}`;
        break;
      case 'UND_ERR_SOCKET':
      case 'ECONNRESET':
      case 'EPIPE':
      case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
        message = `connection to ${host} closed while reading ${what}${progress} (short read)`;
        break;
      default:
        message = `cannot read ${what}: ${e instanceof Error ? e.message : String(e)}`;
    }
    return new ModelFormatError(message, path, 'unreachable', { cause: e });
  }

  private async send(path: string, method: 'GET' | 'HEAD', range: string | null, signal: AbortSignal | null): Promise<HttpResponse> {
    const url = this.urlFor(path);
    signal?.throwIfAborted();
    try {
      return await request(url, {
        method,
        dispatcher: this.dispatcher,
        headers: range === null ? {} : { range },
        headersTimeout: this.options.timeoutMs,
        bodyTimeout: this.options.timeoutMs,
        signal: signal ?? undefined,
      });
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw this.transportError(e, path, '');
    }
  }

  private async unexpectedStatus(res: HttpResponse, path: string, detail: string): Promise<never> {
    await res.body.dump();
    if (res.statusCode === 404 || res.statusCode === 410) throw missing(path, this.uri);
    throw new ModelFormatError(
      `unexpected HTTP ${res.statusCode} for ${path} at ${this.uri}${detail}`,
      path,
      res.statusCode >= 500 ? 'unreachable' : 'invalid',
    );
  }

  async size(path: string): Promise<number> {
    const head = await this.send(path, 'HEAD', null, null);
    await head.body.dump();
    const length = Number(header(head.headers, 'content-length') ?? NaN);
    if (head.statusCode === 200 && Number.isSafeInteger(length)) return length;
    if (head.statusCode === 404 || head.statusCode === 410) throw missing(path, this.uri);

    // Servers that refuse HEAD or omit its Content-Length: a one-byte ranged GET names the size.
    const res = await this.send(path, 'GET', 'bytes=0-0', null);
    if (res.statusCode === 206) {
      await res.body.dump();
      const total = parseContentRange(header(res.headers, 'content-range'))?.total ?? null;
      if (total !== null) return total;
    } else if (res.statusCode === 416) {
      await res.body.dump();
      const total = unsatisfiedRangeTotal(res.headers);
      if (total !== null) return total;
    } else if (res.statusCode === 200) {
      await res.body.dump();
      const whole = Number(header(res.headers, 'content-length') ?? NaN);
      if (Number.isSafeInteger(whole)) return whole;
    } else {
      return this.unexpectedStatus(res, path, '');
    }
    throw new ModelFormatError(`cannot tell the size of ${path} at ${this.uri}: no Content-Length or Content-Range`, path, 'invalid');
  }

  async readFile(path: string): Promise<Uint8Array> {
    const res = await this.send(path, 'GET', null, null);
    if (res.statusCode !== 200) return this.unexpectedStatus(res, path, '');
    const length = Number(header(res.headers, 'content-length') ?? NaN);
    const chunks: Uint8Array[] = [];
    let got = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        chunks.push(chunk);
        got += chunk.length;
      }
    } catch (e) {
      throw this.transportError(e, path, ` after ${got} bytes`);
    }
    if (Number.isSafeInteger(length) && got !== length) throw shortRead(path, this.uri, 0, length, got);
    return concat(chunks, got);
  }

  /** Starts a ranged GET for [start, end) and checks the server answered with exactly that range. */
  private async openRange(path: string, start: number, end: number, signal: AbortSignal | null): Promise<HttpResponse> {
    const rangeHeader = `bytes=${start}-${end - 1}`;
    const res = await this.send(path, 'GET', rangeHeader, signal);
    if (res.statusCode === 206) {
      const cr = parseContentRange(header(res.headers, 'content-range'));
      if (cr !== null && cr.first === start && cr.last < end - 1 && cr.total === cr.last + 1) {
        await res.body.dump();
        throw shortRead(path, this.uri, start, end, cr.last + 1 - start);
      }
      if (cr === null || cr.first !== start || cr.last !== end - 1) {
        await res.body.dump();
        throw new ModelFormatError(
          `server answered ${rangeHeader} of ${path} at ${this.uri} with Content-Range ${JSON.stringify(header(res.headers, 'content-range'))}`,
          path,
          'invalid',
        );
      }
      return res;
    }
    if (res.statusCode === 200 && start === 0 && Number(header(res.headers, 'content-length')) === end) return res;
    if (res.statusCode === 416) {
      await res.body.dump();
      const total = unsatisfiedRangeTotal(res.headers);
      throw shortRead(path, this.uri, start, end, total === null ? 0 : Math.max(0, total - start));
    }
    if (res.statusCode === 200) {
      return this.unexpectedStatus(res, path, ` (the server ignored the Range header ${rangeHeader}; Range support is required)`);
    }
    return this.unexpectedStatus(res, path, ` for ${rangeHeader}`);
  }

  readRange(path: string, start: number, end: number): Promise<Uint8Array> {
    return collectRange(this, path, start, end);
  }

  async streamRange(
    path: string,
    start: number,
    end: number,
    onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>,
    signal: AbortSignal | null,
  ): Promise<void> {
    checkRange(path, start, end);
    signal?.throwIfAborted();
    if (end === start) return;
    const res = await this.openRange(path, start, end, signal);
    const delivered = await pump(
      res.body,
      start,
      end,
      onChunk,
      signal,
      (e, got) => this.transportError(e, path, ` after ${got} of ${end - start} bytes`),
      () => new ModelFormatError(`server sent more than the ${end - start} bytes asked of ${path} at ${this.uri}`, path, 'invalid'),
    );
    if (delivered !== end) throw shortRead(path, this.uri, start, end, delivered - start);
  }
}

/**
 * Feeds a byte stream to onChunk with absolute offsets and returns the offset after the last
 * byte. Errors of the stream go through `streamError` (with the bytes delivered so far); errors
 * of onChunk pass unchanged; an aborted signal rejects with its reason. The stream is closed
 * whichever way this ends.
 */
export async function pump(
  stream: AsyncIterable<Uint8Array>,
  start: number,
  end: number,
  onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>,
  signal: AbortSignal | null,
  streamError: (e: unknown, got: number) => Error,
  overrun: () => Error,
): Promise<number> {
  const it = stream[Symbol.asyncIterator]();
  let offset = start;
  try {
    for (;;) {
      let step: IteratorResult<Uint8Array>;
      try {
        step = await it.next();
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        throw streamError(e, offset - start);
      }
      if (step.done === true) return offset;
      if (offset + step.value.length > end) throw overrun();
      await onChunk(step.value, offset);
      offset += step.value.length;
    }
  } finally {
    await it.return?.();
  }
}

export function concat(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}
