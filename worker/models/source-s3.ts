// Model files in S3 or any S3-compatible store (Swift's s3api, MinIO, Ceph RGW), read through
// the AWS SDK so that signing, credentials and retries are the well-kept ones. Like the HTTP
// source it reads byte ranges, so a pipeline stage fetches only its own tensors. Settings come
// from the environment, as a worker's do: PARASERVE_S3_ENDPOINT (unset: AWS itself), AWS_REGION
// (default us-east-1), credentials from the SDK's default chain (AWS_ACCESS_KEY_ID, ...).
// The SDK is imported on first use, so processes that never read s3:// do not pay for it.
import type { GetObjectCommandOutput, S3Client } from '@aws-sdk/client-s3';
import { ModelFormatError } from './errors.js';
import {
  checkPath,
  checkRange,
  collectRange,
  concat,
  errorCode,
  missing,
  parseContentRange,
  pump,
  shortRead,
  type ModelSourceOptions,
  type ModelSourceReader,
} from './source.js';

/** How to reach an S3-compatible service; see s3SettingsFromEnv. */
export interface S3Settings {
  /** e.g. http://127.0.0.1:9080; null: AWS's own endpoints (virtual-hosted style). */
  endpoint: string | null;
  region: string;
}

/** Pure: the S3 settings named by environment variables. */
export function s3SettingsFromEnv(env: NodeJS.ProcessEnv): S3Settings {
  const endpoint = env['PARASERVE_S3_ENDPOINT']?.trim() ?? '';
  const region = env['AWS_REGION']?.trim() || env['AWS_DEFAULT_REGION']?.trim() || 'us-east-1';
  return { endpoint: endpoint === '' ? null : endpoint, region };
}

/** Pure: bucket and key prefix ("" or ending in "/") of an s3://bucket/prefix URL. */
export function parseS3Location(url: URL): { bucket: string; prefix: string } {
  const bucket = url.hostname;
  const invalid = (): ModelFormatError =>
    new ModelFormatError(`invalid S3 source ${JSON.stringify(url.href)}: expected s3://bucket/prefix`, null, 'invalid');
  if (bucket === '' || url.username !== '' || url.password !== '' || url.port !== '' || url.search !== '' || url.hash !== '') throw invalid();
  let path: string;
  try {
    path = decodeURIComponent(url.pathname);
  } catch {
    throw invalid();
  }
  const parts = path.split('/').filter((p) => p !== '');
  return { bucket, prefix: parts.length === 0 ? '' : `${parts.join('/')}/` };
}

type S3Sdk = typeof import('@aws-sdk/client-s3');

interface S3Connection {
  sdk: S3Sdk;
  client: S3Client;
}

const connections = new Map<string, Promise<S3Connection>>();

/** One client per settings and timeout, so sources opened for successive loads share connections. */
function connectionFor(settings: S3Settings, timeoutMs: number): Promise<S3Connection> {
  const key = JSON.stringify([settings.endpoint, settings.region, timeoutMs]);
  let connection = connections.get(key);
  if (connection === undefined) {
    connection = import('@aws-sdk/client-s3').then((sdk) => ({ sdk, client: newClient(sdk, settings, timeoutMs) }));
    // Every read awaits it and reports its failure; a source opened ahead of its reads (a
    // fetch thread preparing for a load) must not leave the rejection unhandled meanwhile.
    connection.catch(() => undefined);
    connections.set(key, connection);
  }
  return connection;
}

function newClient(sdk: S3Sdk, settings: S3Settings, timeoutMs: number): S3Client {
  return new sdk.S3Client({
    region: settings.region,
    ...(settings.endpoint === null ? {} : { endpoint: settings.endpoint, forcePathStyle: true }),
    // S3-compatible servers reject the SDK's default aws-chunked trailing checksums.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { connectionTimeout: timeoutMs, socketTimeout: timeoutMs },
  });
}

/** Opens s3://bucket/prefix with settings from the environment (called by openModelSource). */
export function openS3Source(uri: string, url: URL, options: ModelSourceOptions): ModelSourceReader {
  const { bucket, prefix } = parseS3Location(url);
  const settings = s3SettingsFromEnv(process.env);
  if (settings.endpoint !== null && !URL.canParse(settings.endpoint)) {
    throw new ModelFormatError(`PARASERVE_S3_ENDPOINT ${JSON.stringify(settings.endpoint)} is not a URL (expected e.g. http://127.0.0.1:9080)`, null, 'invalid');
  }
  return new S3Source(uri, bucket, prefix, settings, connectionFor(settings, options.timeoutMs), options.timeoutMs);
}

const AUTH_ERRORS = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'InvalidToken',
  'ExpiredToken',
  'AuthorizationHeaderMalformed',
]);

function errorName(e: unknown): string {
  return e instanceof Error ? e.name : '';
}

/** The HTTP status of an SDK service error ($metadata.httpStatusCode); null for other errors. */
function httpStatus(e: unknown): number | null {
  if (typeof e !== 'object' || e === null || !('$metadata' in e)) return null;
  const metadata: unknown = e.$metadata;
  if (typeof metadata !== 'object' || metadata === null || !('httpStatusCode' in metadata)) return null;
  return typeof metadata.httpStatusCode === 'number' ? metadata.httpStatusCode : null;
}

class S3Source implements ModelSourceReader {
  constructor(
    readonly uri: string,
    private readonly bucket: string,
    private readonly prefix: string,
    private readonly settings: S3Settings,
    private readonly connection: Promise<S3Connection>,
    private readonly timeoutMs: number,
  ) {}

  private key(path: string): string {
    checkPath(path);
    return `${this.prefix}${path}`;
  }

  private where(): string {
    return this.settings.endpoint ?? `AWS S3 (${this.settings.region})`;
  }

  /** Any failure of the SDK or the body stream as a ModelFormatError about `path`. */
  private failure(e: unknown, path: string, progress: string): Error {
    if (e instanceof ModelFormatError) return e;
    const name = errorName(e);
    const statusCode = httpStatus(e);
    const what = `${path} at ${this.uri}`;
    if (name === 'NoSuchBucket') {
      return new ModelFormatError(`no bucket ${this.bucket} at ${this.where()} (reading ${path})`, path, 'missing_file', { cause: e });
    }
    if (name === 'NoSuchKey' || name === 'NotFound' || statusCode === 404) return missing(path, this.uri);
    if (name === 'CredentialsProviderError') {
      return new ModelFormatError(
        `no S3 credentials to read ${what} from ${this.where()}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or another source of the AWS SDK's default chain)`,
        path,
        'unreachable',
        { cause: e },
      );
    }
    if (AUTH_ERRORS.has(name) || statusCode === 401 || statusCode === 403) {
      return new ModelFormatError(
        `access to ${what} denied by ${this.where()} (${name || `HTTP ${statusCode}`}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions`,
        path,
        'unreachable',
        { cause: e },
      );
    }
    const code = errorCode(e);
    if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EHOSTUNREACH') {
      return new ModelFormatError(`cannot connect to ${this.where()} (${code}) reading ${what}`, path, 'unreachable', { cause: e });
    }
    if (name === 'TimeoutError' || code === 'ETIMEDOUT') {
      return new ModelFormatError(`timed out after ${this.timeoutMs} ms reading ${what}${progress}`, path, 'unreachable', { cause: e });
    }
    if (code === 'ECONNRESET' || code === 'EPIPE' || name === 'AbortError') {
      return new ModelFormatError(`connection to ${this.where()} closed while reading ${what}${progress} (short read)`, path, 'unreachable', { cause: e });
    }
    const message = e instanceof Error ? e.message : String(e);
    return new ModelFormatError(
      `cannot read ${what} from ${this.where()}: ${name || 'error'}${statusCode === null ? '' : ` (HTTP ${statusCode})`}: ${message}`,
      path,
      statusCode !== null && statusCode < 500 ? 'invalid' : 'unreachable',
      { cause: e },
    );
  }

  async size(path: string): Promise<number> {
    const Key = this.key(path);
    try {
      const { sdk, client } = await this.connection;
      const head = await client.send(new sdk.HeadObjectCommand({ Bucket: this.bucket, Key }));
      if (head.ContentLength === undefined || !Number.isSafeInteger(head.ContentLength)) {
        throw new ModelFormatError(`cannot tell the size of ${path} at ${this.uri}: no Content-Length`, path, 'invalid');
      }
      return head.ContentLength;
    } catch (e) {
      throw this.failure(e, path, '');
    }
  }

  private async get(path: string, range: string | null, signal: AbortSignal | null): Promise<GetObjectCommandOutput> {
    const Key = this.key(path);
    signal?.throwIfAborted();
    try {
      const { sdk, client } = await this.connection;
      return await client.send(
        new sdk.GetObjectCommand({ Bucket: this.bucket, Key, ...(range === null ? {} : { Range: range }) }),
        signal === null ? {} : { abortSignal: signal },
      );
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (errorName(e) === 'InvalidRange' || httpStatus(e) === 416) throw new RangeNotSatisfiable();
      throw this.failure(e, path, '');
    }
  }

  async readFile(path: string): Promise<Uint8Array> {
    const res = await this.get(path, null, null);
    const chunks: Uint8Array[] = [];
    let got = 0;
    await this.drain(res, path, 0, res.ContentLength ?? Number.MAX_SAFE_INTEGER, null, (chunk) => {
      chunks.push(chunk);
      got += chunk.length;
    });
    if (res.ContentLength !== undefined && got !== res.ContentLength) throw shortRead(path, this.uri, 0, res.ContentLength, got);
    return concat(chunks, got);
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
    const rangeHeader = `bytes=${start}-${end - 1}`;
    let res: GetObjectCommandOutput;
    try {
      res = await this.get(path, rangeHeader, signal);
    } catch (e) {
      if (e instanceof RangeNotSatisfiable) throw shortRead(path, this.uri, start, end, 0);
      throw e;
    }
    const cr = parseContentRange(res.ContentRange ?? null);
    if (cr === null || cr.first !== start || cr.last > end - 1) {
      discard(res);
      throw new ModelFormatError(
        `${this.where()} answered ${rangeHeader} of ${path} at ${this.uri} with Content-Range ${JSON.stringify(res.ContentRange ?? null)}`,
        path,
        'invalid',
      );
    }
    if (cr.last < end - 1) {
      discard(res);
      throw shortRead(path, this.uri, start, end, cr.last + 1 - start);
    }
    const delivered = await this.drain(res, path, start, end, signal, onChunk);
    if (delivered !== end) throw shortRead(path, this.uri, start, end, delivered - start);
  }

  private async drain(
    res: GetObjectCommandOutput,
    path: string,
    start: number,
    end: number,
    signal: AbortSignal | null,
    onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>,
  ): Promise<number> {
    const body = bodyStream(res);
    if (body === null) {
      throw new ModelFormatError(`${this.where()} sent no body for ${path} at ${this.uri}`, path, 'invalid');
    }
    return pump(
      body,
      start,
      end,
      onChunk,
      signal,
      (e, got) => this.failure(e, path, ` after ${got} of ${end - start} bytes`),
      () => new ModelFormatError(`${this.where()} sent more than the ${end - start} bytes asked of ${path} at ${this.uri}`, path, 'invalid'),
    );
  }
}

/** A 416 from the service: the range starts at or past the end of the object. */
class RangeNotSatisfiable extends Error {
  override name = 'RangeNotSatisfiable';
}

/** The response body as a byte stream (in Node the SDK returns an http.IncomingMessage). */
function bodyStream(res: GetObjectCommandOutput): AsyncIterable<Uint8Array> | null {
  const body: unknown = res.Body;
  if (typeof body === 'object' && body !== null && Symbol.asyncIterator in body) return body as AsyncIterable<Uint8Array>;
  return null;
}

function discard(res: GetObjectCommandOutput): void {
  const body: unknown = res.Body;
  if (typeof body === 'object' && body !== null && 'destroy' in body && typeof body.destroy === 'function') body.destroy();
}
