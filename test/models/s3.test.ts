// s3:// model sources against a real S3-compatible server (OpenStack Swift with s3api, started
// by scripts/s3-server.sh on loopback ports of its own): sizes, ranges and streams match the
// files, headers and inspection work over S3, missing keys, bad credentials and a dead
// endpoint give clear ModelFormatErrors, and a worker loading s3:// generates the same greedy
// tokens as one loading file://. Skipped only where the packages are missing and cannot be
// installed (not root); in CI it runs as root and installs them.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { startWorker } from '../../worker/daemon/main.js';
import { inspectModel } from '../../worker/models/inspect.js';
import { readCheckpointTensors } from '../../worker/models/safetensors.js';
import { parseS3Location, s3SettingsFromEnv } from '../../worker/models/source-s3.js';
import { openModelSource } from '../../worker/models/source.js';
import { generate, loadRequest, loadStage, makeModel, tempDir, tokensOf, waitForSnapshot, workerClient } from '../worker/fixtures/harness.js';

const run = promisify(execFile);
const script = fileURLToPath(new URL('../../scripts/s3-server.sh', import.meta.url));

t.test('s3:// locations and settings', async (t) => {
  t.same(parseS3Location(new URL('s3://models/llama/7b/')), { bucket: 'models', prefix: 'llama/7b/' });
  t.same(parseS3Location(new URL('s3://models')), { bucket: 'models', prefix: '' });
  t.throws(() => parseS3Location(new URL('s3://models:99/x')), { name: 'ModelFormatError', code: 'invalid' });
  t.throws(() => parseS3Location(new URL('s3://u:p@models/x')), { name: 'ModelFormatError', code: 'invalid' });
  t.throws(() => parseS3Location(new URL('s3://models/%zz')), { name: 'ModelFormatError', code: 'invalid' });
  t.same(s3SettingsFromEnv({}), { endpoint: null, region: 'us-east-1' });
  const saved = process.env['PARASERVE_S3_ENDPOINT'];
  process.env['PARASERVE_S3_ENDPOINT'] = 'not a url';
  t.throws(() => openModelSource('s3://models/m'), { name: 'ModelFormatError', code: 'invalid', message: /PARASERVE_S3_ENDPOINT/ });
  if (saved === undefined) delete process.env['PARASERVE_S3_ENDPOINT'];
  else process.env['PARASERVE_S3_ENDPOINT'] = saved;
  t.same(s3SettingsFromEnv({ PARASERVE_S3_ENDPOINT: 'http://127.0.0.1:1', AWS_REGION: 'eu-west-1' }), {
    endpoint: 'http://127.0.0.1:1',
    region: 'eu-west-1',
  });
});

t.test('a stalled S3 endpoint times out with a clear error', async (t) => {
  // Headers never come for HEAD; a GET gets its headers and half its body, then nothing.
  const server = createHttpServer((req, res) => {
    if (req.method !== 'GET') return;
    res.writeHead(206, { 'content-length': '100', 'content-range': 'bytes 0-99/1000', 'content-type': 'application/octet-stream' });
    res.write(Buffer.alloc(50));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const settings: Record<string, string> = {
    PARASERVE_S3_ENDPOINT: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    AWS_ACCESS_KEY_ID: 'stall',
    AWS_SECRET_ACCESS_KEY: 'stall',
  };
  const saved = Object.keys(settings).map((name) => [name, process.env[name]] as const);
  Object.assign(process.env, settings);
  t.teardown(() => {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });
  const stalled = openModelSource('s3://bucket/model', { timeoutMs: 200 });
  await t.rejects(stalled.size('config.json'), { name: 'ModelFormatError', code: 'unreachable', message: /timed out after 200 ms reading config\.json/ });
  await t.rejects(stalled.readRange('w.bin', 0, 100), {
    name: 'ModelFormatError',
    code: 'unreachable',
    message: /timed out after 200 ms reading w\.bin at s3:\/\/bucket\/model after 50 of 100 bytes/,
  });
});

/** A free loopback port, optionally one whose next `extra` ports are free as well. */
async function freePort(extra = 0): Promise<number> {
  for (;;) {
    const servers = [createServer()];
    await new Promise<void>((resolve) => servers[0]!.listen(0, '127.0.0.1', resolve));
    const base = (servers[0]!.address() as AddressInfo).port;
    let ok = base + extra <= 65535;
    for (let i = 1; ok && i <= extra; i++) {
      const next = createServer();
      ok = await new Promise<boolean>((resolve) => {
        next.once('error', () => resolve(false));
        next.listen(base + i, '127.0.0.1', () => resolve(true));
      });
      if (ok) servers.push(next);
    }
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    if (ok) return base;
  }
}

async function packagesInstalled(): Promise<boolean> {
  try {
    await run('bash', [script, 'check']);
    return true;
  } catch {
    return false;
  }
}

const isRoot = process.getuid?.() === 0;
const skip = !isRoot && !(await packagesInstalled()) ? 'Swift is not installed and this is not root (run scripts/setup-debian.sh)' : false;
if (skip !== false) console.log(`# skipping the S3 server tests: ${skip}`);

t.test('against Swift s3api', { skip }, async (t) => {
  const scratch = await tempDir('s3');
  const port = await freePort();
  const serverEnv = {
    ...process.env,
    PARASERVE_S3_DIR: join(scratch.path, 'server'),
    PARASERVE_S3_PORT: String(port),
    PARASERVE_S3_BACKEND_PORT: String(await freePort(2)),
    PARASERVE_S3_MEMCACHED_PORT: String(await freePort()),
  };
  t.teardown(async () => {
    await run('bash', [script, 'stop'], { env: serverEnv });
    await scratch.remove();
  });
  try {
    await run('bash', [script, 'start'], { env: serverEnv, timeout: 240_000 });
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr ?? '';
    throw new Error(`scripts/s3-server.sh start failed:\n${stderr}`, { cause: e });
  }
  const endpoint = `http://127.0.0.1:${port}`;
  Object.assign(process.env, {
    PARASERVE_S3_ENDPOINT: endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test:tester',
    AWS_SECRET_ACCESS_KEY: 'testing',
  });

  const model = await makeModel(join(scratch.path, 'model'), 'tiny-llama2', true);
  const s3 = new S3Client({
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  t.teardown(() => s3.destroy());
  await s3.send(new CreateBucketCommand({ Bucket: 'models' }));
  for (const f of model.files) {
    await s3.send(new PutObjectCommand({ Bucket: 'models', Key: `tiny/${f.path}`, Body: await readFile(join(model.dir, f.path)) }));
  }
  const uri = 's3://models/tiny';
  const source = openModelSource(uri);
  const local = openModelSource(model.uri);
  const weights = model.files.find((f) => f.path.endsWith('.safetensors') && f.size > 4096)!;

  t.test('sizes, whole files, ranges and streams match the files', async (t) => {
    t.equal(source.uri, uri);
    for (const f of model.files) t.equal(await source.size(f.path), f.size, f.path);
    t.same(Buffer.from(await source.readFile('config.json')), Buffer.from(model.configJson));
    const bytes = await readFile(join(model.dir, weights.path));
    const [start, end] = [1234, Math.min(weights.size, 1234 + 300_000)];
    t.same(Buffer.from(await source.readRange(weights.path, start, end)), bytes.subarray(start, end));
    t.equal((await source.readRange(weights.path, 7, 7)).length, 0);
    let next = start;
    const streamed = Buffer.alloc(end - start);
    await source.streamRange(
      weights.path,
      start,
      end,
      (chunk, offset) => {
        t.equal(offset, next);
        next += chunk.length;
        streamed.set(chunk, offset - start);
      },
      null,
    );
    t.equal(next, end);
    t.same(streamed, bytes.subarray(start, end));
    await t.rejects(source.readRange(weights.path, weights.size - 10, weights.size + 10), { name: 'ModelFormatError', code: 'invalid', message: /short read/ });
    await t.rejects(source.readRange(weights.path, weights.size + 5, weights.size + 10), { name: 'ModelFormatError', message: /short read/ });
  });

  t.test('headers and inspection over S3 equal those of the files', async (t) => {
    t.same(await readCheckpointTensors(source), await readCheckpointTensors(local));
    const [remote, onDisk] = await Promise.all([inspectModel(source), inspectModel(local)]);
    t.same(remote.config, onDisk.config);
    t.equal(remote.totalBytes, onDisk.totalBytes);
    t.same(remote.files, onDisk.files);
  });

  t.test('missing keys and buckets are missing_file', async (t) => {
    await t.rejects(source.size('nope.safetensors'), { name: 'ModelFormatError', code: 'missing_file', file: 'nope.safetensors', message: /missing file nope\.safetensors/ });
    await t.rejects(source.readRange('nope.bin', 0, 10), { name: 'ModelFormatError', code: 'missing_file' });
    await t.rejects(source.readFile('nope.json'), { name: 'ModelFormatError', code: 'missing_file' });
    await t.rejects(openModelSource('s3://no-such-bucket/m').readFile('config.json'), {
      name: 'ModelFormatError',
      code: 'missing_file',
      message: /no bucket no-such-bucket at http:\/\/127\.0\.0\.1:\d+/,
    });
    await t.rejects(source.size('../escape'), { name: 'ModelFormatError', code: 'invalid' });
  });

  t.test('an abort ends a stream with its reason', async (t) => {
    const abort = new AbortController();
    const reason = new Error('cancelled by test');
    await t.rejects(
      source.streamRange(weights.path, 0, weights.size, () => abort.abort(reason), abort.signal),
      reason,
    );
  });

  t.test('bad credentials and a dead endpoint say so', async (t) => {
    // The settings and credentials are read when a source (and its client) is first used;
    // distinct timeouts give these sources clients of their own.
    process.env['AWS_SECRET_ACCESS_KEY'] = 'wrong';
    const denied = openModelSource(uri, { timeoutMs: 29_999 });
    await t.rejects(denied.readFile('config.json'), { name: 'ModelFormatError', code: 'unreachable', message: /denied .*AWS_ACCESS_KEY_ID/ });
    process.env['AWS_SECRET_ACCESS_KEY'] = 'testing';
    process.env['PARASERVE_S3_ENDPOINT'] = `http://127.0.0.1:${await freePort()}`;
    const dead = openModelSource(uri, { timeoutMs: 29_998 });
    process.env['PARASERVE_S3_ENDPOINT'] = endpoint;
    await t.rejects(dead.size('config.json'), { name: 'ModelFormatError', code: 'unreachable', message: /cannot connect to http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/ });
  });

  t.test('a worker loading s3:// generates what one loading file:// does', async (t) => {
    const worker = await startWorker({
      id: 's3-worker',
      host: '127.0.0.1',
      port: 0,
      gatewayUrl: null,
      backend: 'cpu',
      hostCacheBytes: 64 * 1024 * 1024,
      maxContext: 64,
      drainTimeoutMs: 2_000,
      logLevel: 'silent',
      fetchBandwidthBytesPerS: null,
      loadOverlap: true,
      fetchThreads: 1,
    });
    const client = workerClient(worker.address);
    t.teardown(async () => {
      client.close();
      await worker.close();
    });
    const fromS3 = await loadStage(client, loadRequest(model, 'from-s3', uri));
    t.equal(fromS3.code, grpc.status.OK, fromS3.details);
    const fromFile = await loadStage(client, loadRequest(model, 'from-file'));
    t.equal(fromFile.code, grpc.status.OK, fromFile.details);
    const prompt = [5, 17, 42, 99, 3];
    const a = tokensOf(await generate(client, { requestId: 'a', instanceId: 'from-s3', promptTokenIds: prompt, maxTokens: 10 }));
    const b = tokensOf(await generate(client, { requestId: 'b', instanceId: 'from-file', promptTokenIds: prompt, maxTokens: 10 }));
    t.equal(a.length, 10);
    t.same(a, b);
    const snapshot = await waitForSnapshot(client, (s) => s.fetchBytesPerS > 0);
    t.ok(snapshot.fetchBytesPerS > 0, 'fetch bandwidth measured');

    const missing = await loadStage(client, loadRequest(model, 'from-nowhere', 's3://models/absent'));
    t.not(missing.code, grpc.status.OK);
    t.match(missing.details, /missing file/);
  });
});
