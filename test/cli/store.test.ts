// The model store must behave like the object stores workers fetch from: byte ranges (206
// with Content-Range, 416 for unsatisfiable ones), HEAD with the size, and no way out of its
// root — workers on other machines can reach it, so a path must never name a file outside.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { startStore, StoreRootError } from '../../gateway/store/server.js';

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** node:http with the path sent exactly as written (fetch/undici would normalise "..") */
function get(url: string, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<RawResponse> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const content = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));

t.test('store serves files with Range and keeps to its root', async (t) => {
  const base = await mkdtemp(join(tmpdir(), 'paraserve-store-'));
  t.teardown(() => rm(base, { recursive: true, force: true }));
  const root = join(base, 'models');
  await mkdir(join(root, 'm', 'sub'), { recursive: true });
  await mkdir(join(root, '.m.tmp-1'), { recursive: true });
  await writeFile(join(root, 'm', 'model.safetensors'), content);
  await writeFile(join(root, 'm', 'sub', 'a.json'), '{"a":1}');
  await writeFile(join(root, '.m.tmp-1', 'config.json'), '{}');
  await writeFile(join(base, 'secret.txt'), 'outside the root');

  const store = await startStore({ root, host: '127.0.0.1', port: 0 });
  t.teardown(() => store.close());
  t.match(store.url, /^http:\/\/127\.0\.0\.1:\d+$/);

  const whole = await get(store.url, '/m/model.safetensors');
  t.equal(whole.status, 200);
  t.equal(whole.headers['accept-ranges'], 'bytes');
  t.same(whole.body, content);

  const head = await get(store.url, '/m/model.safetensors', {}, 'HEAD');
  t.equal(head.status, 200);
  t.equal(head.headers['content-length'], '1000');
  t.equal(head.body.length, 0);

  const range = await get(store.url, '/m/model.safetensors', { range: 'bytes=100-199' });
  t.equal(range.status, 206);
  t.equal(range.headers['content-range'], 'bytes 100-199/1000');
  t.same(range.body, content.subarray(100, 200));

  const suffix = await get(store.url, '/m/model.safetensors', { range: 'bytes=-10' });
  t.equal(suffix.status, 206);
  t.same(suffix.body, content.subarray(990));

  const open = await get(store.url, '/m/model.safetensors', { range: 'bytes=995-' });
  t.equal(open.status, 206);
  t.equal(open.headers['content-range'], 'bytes 995-999/1000');

  const beyond = await get(store.url, '/m/model.safetensors', { range: 'bytes=1000-1100' });
  t.equal(beyond.status, 416);
  t.equal(beyond.headers['content-range'], 'bytes */1000');

  const nested = await get(store.url, '/m/sub/a.json');
  t.equal(nested.status, 200);
  t.equal(nested.body.toString(), '{"a":1}');

  t.equal((await get(store.url, '/m/missing.bin')).status, 404);
  const dir = await get(store.url, '/m/');
  t.ok(dir.status === 403 || dir.status === 404, `no directory listing (${dir.status})`);
  t.notOk(dir.body.toString().includes('model.safetensors'));
  t.equal((await get(store.url, '/.m.tmp-1/config.json')).status, 404, 'half-written models are hidden');

  for (const path of ['/../secret.txt', '/m/../../secret.txt', '/%2e%2e/secret.txt', '/m/..%2f..%2fsecret.txt', '/..%5csecret.txt']) {
    const res = await get(store.url, path);
    t.ok(res.status >= 400 && res.status < 500, `${path} refused (${res.status})`);
    t.notOk(res.body.toString().includes('outside the root'), `${path} does not leak`);
  }
});

t.test('store refuses a root that is not a directory', async (t) => {
  await t.rejects(startStore({ root: join(tmpdir(), 'paraserve-no-such-dir-' + process.pid), host: '127.0.0.1', port: 0 }), StoreRootError);
});
