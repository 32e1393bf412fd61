// Model sources: file:// and http(s):// behave the same for sizes, whole files, ranges and
// streams, and every failure (missing file, refused connection, timeout, short read, a server
// without Range support) is a ModelFormatError that says what happened.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { type ModelSourceReader, openModelSource, parseContentRange } from '../../worker/models/source.js';
import { startRangeServer } from './fixtures/range-server.js';

const data = new Uint8Array(3_000_000);
for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >>> 11)) & 0xff;

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

const root = await mkdtemp(join(tmpdir(), 'paraserve-src-'));
t.teardown(() => rm(root, { recursive: true, force: true }));
await writeFile(join(root, 'blob.bin'), data);
await writeFile(join(root, 'empty.bin'), new Uint8Array(0));
const server = await startRangeServer(root);
t.teardown(() => server.close());

const sources: [string, () => ModelSourceReader][] = [
  ['file', () => openModelSource(pathToFileURL(root).href)],
  ['http', () => openModelSource(server.url)],
];

for (const [kind, make] of sources) {
  t.test(`${kind}: size, whole file, ranges, streams`, async (t) => {
    const source = make();
    t.equal(await source.size('blob.bin'), data.length);
    t.equal(await source.size('empty.bin'), 0);
    t.same(Buffer.from(await source.readFile('blob.bin')).equals(Buffer.from(data)), true, 'readFile');
    t.same(Buffer.from(await source.readRange('blob.bin', 1000, 1010)), Buffer.from(data.subarray(1000, 1010)), 'readRange');
    t.equal((await source.readRange('blob.bin', 5, 5)).length, 0, 'empty range');
    t.same(Buffer.from(await source.readRange('blob.bin', 0, data.length)).equals(Buffer.from(data)), true, 'range of whole file');

    const start = 12_345;
    const end = data.length - 77;
    const got = new Uint8Array(end - start);
    let expectedOffset = start;
    let chunks = 0;
    await source.streamRange(
      'blob.bin',
      start,
      end,
      async (chunk, offset) => {
        t.equal(offset, expectedOffset, 'offsets are absolute and in order');
        got.set(chunk, offset - start);
        expectedOffset += chunk.length;
        chunks++;
      },
      null,
    );
    t.equal(expectedOffset, end);
    t.ok(chunks > 1, 'delivered in several chunks');
    t.ok(Buffer.from(got).equals(Buffer.from(data.subarray(start, end))), 'streamed bytes');

    await t.rejects(source.size('nope.json'), { name: 'ModelFormatError', code: 'missing_file', file: 'nope.json', message: `missing file nope.json at ${source.uri}` });
    await t.rejects(source.readFile('nope.json'), { code: 'missing_file' });
    await t.rejects(source.readRange('nope.bin', 0, 4), { code: 'missing_file' });
    await t.rejects(source.readRange('blob.bin', data.length - 4, data.length + 4), { name: 'ModelFormatError', message: /short read of blob\.bin .*got 4 of the 8 bytes/ });
    await t.rejects(source.streamRange('blob.bin', data.length, data.length + 1, () => {}, null), { name: 'ModelFormatError', message: /short read/ });
    await t.rejects(source.readFile('../etc/passwd'), { name: 'ModelFormatError', message: /invalid model file path/ });
    await t.rejects(source.readRange('blob.bin', 10, 5), { message: /invalid byte range \[10, 5\)/ });
  });

  t.test(`${kind}: abort stops a stream and errors of onChunk pass through`, async (t) => {
    const source = make();
    const controller = new AbortController();
    let seen = 0;
    await t.rejects(
      source.streamRange(
        'blob.bin',
        0,
        data.length,
        (chunk) => {
          seen += chunk.length;
          controller.abort();
        },
        controller.signal,
      ),
      { name: 'AbortError' },
    );
    t.ok(seen < data.length, 'stopped early');
    const boom = new Error('consumer failed');
    await t.rejects(source.streamRange('blob.bin', 0, 100, () => Promise.reject(boom), null), boom);
    const aborted = AbortSignal.abort();
    await t.rejects(source.streamRange('blob.bin', 0, 100, () => {}, aborted), { name: 'AbortError' });
  });
}

t.test('HEAD refused: size from a one-byte ranged GET', async (t) => {
  const noHead = await startRangeServer(root, { refuseHead: true });
  t.teardown(() => noHead.close());
  const source = openModelSource(noHead.url);
  t.equal(await source.size('blob.bin'), data.length);
  t.equal(await source.size('empty.bin'), 0);
  await t.rejects(source.size('nope.bin'), { code: 'missing_file' });
  t.ok(noHead.requests.some((r) => r.method === 'GET' && r.range === 'bytes=0-0'));
});

t.test('a server that ignores Range is refused unless the whole file was asked for', async (t) => {
  const plain = await startRangeServer(root, { ignoreRange: true });
  t.teardown(() => plain.close());
  const source = openModelSource(plain.url);
  await t.rejects(source.readRange('blob.bin', 10, 20), { name: 'ModelFormatError', message: /ignored the Range header bytes=10-19; Range support is required/ });
  t.equal((await source.readRange('blob.bin', 0, data.length)).length, data.length);
});

t.test('connection refused', async (t) => {
  const probe = createServer();
  const url = await listen(probe);
  await closeServer(probe);
  await t.rejects(openModelSource(url).size('config.json'), {
    name: 'ModelFormatError',
    code: 'unreachable',
    file: 'config.json',
    message: /cannot connect to 127\.0\.0\.1:\d+ \(connection refused\) reading config\.json at http/,
  });
});

t.test('timeout while waiting for headers', async (t) => {
  const hung = createServer(() => {});
  const url = await listen(hung);
  t.teardown(() => closeServer(hung));
  const source = openModelSource(url, { timeoutMs: 200 });
  await t.rejects(source.readFile('config.json'), { name: 'ModelFormatError', code: 'unreachable', message: /timed out after 200 ms reading config\.json at http/ });
});

t.test('connection lost mid-body is a short read', async (t) => {
  const cut = createServer((req, res) => {
    res.writeHead(req.headers.range ? 206 : 200, {
      'content-length': 1000,
      ...(req.headers.range ? { 'content-range': 'bytes 0-999/1000' } : {}),
    });
    res.write(Buffer.alloc(100), () => res.destroy());
  });
  const url = await listen(cut);
  t.teardown(() => closeServer(cut));
  const source = openModelSource(url);
  await t.rejects(source.readRange('blob.bin', 0, 1000), { name: 'ModelFormatError', code: 'unreachable', message: /closed while reading blob\.bin at .* after 100 of 1000 bytes \(short read\)/ });
  await t.rejects(source.readFile('blob.bin'), { code: 'unreachable', message: /short read/ });
});

t.test('wrong Content-Range is refused', async (t) => {
  const liar = createServer((_req, res) => {
    res.writeHead(206, { 'content-length': 10, 'content-range': 'bytes 0-9/100' }).end(Buffer.alloc(10));
  });
  const url = await listen(liar);
  t.teardown(() => closeServer(liar));
  await t.rejects(openModelSource(url).readRange('x.bin', 50, 60), { message: /answered bytes=50-59 of x\.bin .* with Content-Range "bytes 0-9\/100"/ });
});

t.test('unsupported and invalid URIs', async (t) => {
  t.throws(() => openModelSource('gs://bucket/model'), { name: 'ModelFormatError', code: 'unsupported', message: /unsupported source scheme gs:\/\// });
  t.throws(() => openModelSource('not a uri'), { name: 'ModelFormatError', message: /invalid model source URI/ });
});

t.test('parseContentRange', async (t) => {
  t.same(parseContentRange('bytes 0-9/100'), { first: 0, last: 9, total: 100 });
  t.same(parseContentRange('bytes 5-5/*'), { first: 5, last: 5, total: null });
  t.equal(parseContentRange('bytes */100'), null);
  t.equal(parseContentRange(null), null);
});
