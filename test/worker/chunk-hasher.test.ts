// The hashing threads give the digests Node's crypto gives on the main thread, for many chunks
// at once, and refuse a view they could not take whole.
import { createHash, randomBytes } from 'node:crypto';
import t from 'tap';
import { sha256Off } from '../../worker/daemon/chunk-hasher.js';

t.test('digests equal the main thread ones, in any number at once', async (t) => {
  const chunks = Array.from({ length: 24 }, (_, i) => new Uint8Array(randomBytes(1000 + i * 4099)));
  const expected = chunks.map((c) => createHash('sha256').update(c).digest('hex'));
  const copies = chunks.map((c) => Uint8Array.from(c));
  const hashed = Promise.all(chunks.map((c) => sha256Off(c)));
  t.equal(chunks[0]!.byteLength, 0, 'the bytes were moved to the hashing thread');
  const results = await hashed;
  t.same(results.map((r) => r.digest), expected);
  t.ok(results.every((r, i) => Buffer.from(r.bytes).equals(copies[i]!)), 'and come back unchanged');
  t.equal((await sha256Off(new Uint8Array(0))).digest, createHash('sha256').digest('hex'), 'empty input');
});

t.test('a view of part of a buffer is refused', async (t) => {
  const whole = new Uint8Array(64);
  await t.rejects(sha256Off(whole.subarray(8)), { name: 'RangeError' });
  t.equal(whole.byteLength, 64, 'the buffer stays with the caller');
});
