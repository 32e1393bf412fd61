// safetensors header parsing: every check of the reference implementation, with messages that
// name file and tensor; sharded checkpoints read with ranged requests only, over file:// and a
// real HTTP server; the tensor layout a gateway sends with a load, and its checks.
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t, { type Test } from 'tap';
import { ModelFormatError } from '../../worker/models/errors.js';
import { layoutOf, parseSafetensorsHeader, readCheckpointTensors, tensorsFromLayout } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { startRangeServer } from './fixtures/range-server.js';
import { contiguousHeader, rawSafetensors, safetensorsFile } from './fixtures/safetensors-bytes.js';

const FILE = 'model.safetensors';

function parse(bytes: Uint8Array, size: number = bytes.length) {
  return parseSafetensorsHeader(bytes, size, FILE);
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return null;
}

function throwsFormat(t: Test, fn: () => unknown, pattern: RegExp, what: string): void {
  const e = caught(fn);
  t.ok(e instanceof ModelFormatError, `${what}: ModelFormatError`);
  t.match(e, { file: FILE, message: pattern }, what);
  t.match((e as Error).message, /^model\.safetensors: /, `${what}: message names the file`);
}

const good = contiguousHeader([
  { name: 'a', dtype: 'F16', shape: [2, 3] },
  { name: 'b', dtype: 'BF16', shape: [4] },
  { name: 'c', dtype: 'F32', shape: [0, 5] },
  { name: 'd', dtype: 'F32', shape: [3] },
]);

t.test('parses a well-formed header with absolute offsets', async (t) => {
  const bytes = safetensorsFile(good.header, good.dataBytes);
  const base = bytes.length - good.dataBytes;
  const infos = parse(bytes);
  t.same(
    infos.map((i) => [i.name, i.dtype, i.shape, i.begin, i.end]),
    [
      ['a', 'f16', [2, 3], base, base + 12],
      ['b', 'bf16', [4], base + 12, base + 20],
      ['c', 'f32', [0, 5], base + 20, base + 20],
      ['d', 'f32', [3], base + 20, base + 32],
    ],
  );
  t.equal(infos.at(-1)?.end, bytes.length, 'last tensor ends at end of file');
  t.ok(infos.every((i) => i.file === FILE));
  // Only the prefix and header are needed.
  t.equal(parse(bytes.subarray(0, base), bytes.length).length, 4);
});

t.test('a layout sent with a load gives back the tensors it was made from, checked against the files', async (t) => {
  const bytes = safetensorsFile(good.header, good.dataBytes);
  const infos = parse(bytes);
  const files = [{ path: FILE, size: bytes.length }];
  t.same([...tensorsFromLayout(layoutOf(infos), files).values()], infos);
  t.same(layoutOf(infos)[0], { name: 'a', dtype: 'F16', shape: [2, 3], file: FILE, begin: infos[0]!.begin, end: infos[0]!.end }, 'dtypes by their safetensors names');
  t.throws(() => tensorsFromLayout(layoutOf(infos), [{ path: FILE, size: bytes.length - 1 }]), {
    name: 'ModelFormatError',
    message: `${FILE}: tensor "d" ends at byte ${bytes.length}, past the file's ${bytes.length - 1} bytes`,
  });
});

t.test('refuses each corruption with a message naming file and tensor', async (t) => {
  const withEntry = (name: string, entry: unknown, dataBytes: number) =>
    safetensorsFile({ ...good.header, [name]: entry }, dataBytes);

  throwsFormat(t, () => parse(rawSafetensors('{}', 0, 200_000_000n)), /header size 200000000 exceeds the 100000000-byte limit/, 'too large');
  throwsFormat(t, () => parse(rawSafetensors('{}', 0, 2n ** 63n)), /exceeds/, 'huge u64');
  throwsFormat(t, () => parse(rawSafetensors('{"a":1}', 0, 100n)), /header size 100 runs past the end of the file \(15 bytes/, 'past EOF');
  throwsFormat(t, () => parse(new Uint8Array(5)), /too small for a safetensors header/, 'under 8 bytes');
  throwsFormat(t, () => parse(rawSafetensors('{"a": [1,', 0)), /header is not valid JSON/, 'bad JSON');
  throwsFormat(t, () => parse(rawSafetensors('[1,2]', 0)), /not a JSON object/, 'JSON array');
  throwsFormat(t, () => parse(rawSafetensors(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), 0)), /not valid UTF-8/, 'bad UTF-8');
  throwsFormat(t, () => parse(safetensorsFile({ __metadata__: { format: 1 } }, 0)), /__metadata__ value for "format" must be a string/, 'metadata');

  const overlap = { ...good.header, e: { dtype: 'F16', shape: [2], data_offsets: [10, 14] } };
  throwsFormat(t, () => parse(safetensorsFile(overlap, good.dataBytes + 4)), /tensor "e" .*overlaps tensor "a"/, 'overlap');

  const gap = { ...good.header, e: { dtype: 'F16', shape: [2], data_offsets: [36, 40] } };
  throwsFormat(t, () => parse(safetensorsFile(gap, 40)), /gap of 4 bytes before tensor "e"/, 'gap');

  throwsFormat(t, () => parse(safetensorsFile(good.header, good.dataBytes + 3)), /3 trailing bytes after the last tensor/, 'trailing');

  const wrongLength = { ...good.header, b: { dtype: 'BF16', shape: [5], data_offsets: [12, 20] } };
  throwsFormat(t, () => parse(safetensorsFile(wrongLength, good.dataBytes)), /tensor "b": data_offsets \[12, 20\] hold 8 bytes but BF16 \[5\] needs 10/, 'byte length');

  throwsFormat(t, () => parse(withEntry('ids', { dtype: 'I64', shape: [1], data_offsets: [32, 40] }, 40)), /unsupported dtype I64 for tensor ids/, 'I64');
  t.match(caught(() => parse(withEntry('ids', { dtype: 'I64', shape: [1], data_offsets: [32, 40] }, 40))), { code: 'unsupported' });
  throwsFormat(t, () => parse(withEntry('x', { dtype: 'F17', shape: [1], data_offsets: [32, 34] }, 34)), /tensor "x": invalid dtype "F17"/, 'unknown dtype');
  throwsFormat(t, () => parse(withEntry('x', { dtype: 'F16', shape: [-1], data_offsets: [32, 34] }, 34)), /tensor "x": shape must be/, 'negative dim');
  throwsFormat(t, () => parse(withEntry('x', { dtype: 'F16', shape: [1], data_offsets: [34, 32] }, 34)), /tensor "x": data_offsets \[34, 32\] end before/, 'reversed');
  throwsFormat(t, () => parse(withEntry('x', { dtype: 'F16', shape: [1] }, 32)), /tensor "x": data_offsets must be/, 'no offsets');

  const whole = safetensorsFile(good.header, good.dataBytes);
  throwsFormat(t, () => parse(whole.subarray(0, whole.length - 5), whole.length - 5), /tensor "d" ends at data byte 32 but the file holds only 27 data bytes \(truncated file\?\)/, 'truncated');
});

t.test('reads a single-file and a sharded checkpoint, over file:// and HTTP with ranges only', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'paraserve-st-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  await writeSyntheticModel({ dir: join(root, 'single'), preset: 'tiny-qwen2', seed: 3, dtype: null, sharded: false }, null);
  await writeSyntheticModel({ dir: join(root, 'sharded'), preset: 'tiny-qwen2', seed: 3, dtype: null, sharded: true }, null);

  const single = await readCheckpointTensors(openModelSource(pathToFileURL(join(root, 'single')).href));
  const sharded = await readCheckpointTensors(openModelSource(pathToFileURL(join(root, 'sharded')).href));
  t.equal(single.size, 2 + 2 * 12, 'embed + norm + 12 per qwen2 layer');
  t.same([...sharded.keys()].sort(), [...single.keys()].sort());
  t.same(new Set([...sharded.values()].map((i) => i.file)), new Set(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']));

  // Bytes at the absolute offsets are the same tensor in both layouts.
  const embedSingle = single.get('model.embed_tokens.weight');
  const embedSharded = sharded.get('model.embed_tokens.weight');
  if (embedSingle === undefined || embedSharded === undefined) throw new Error('no embeddings');
  const a = (await readFile(join(root, 'single', embedSingle.file))).subarray(embedSingle.begin, embedSingle.end);
  const b = (await readFile(join(root, 'sharded', embedSharded.file))).subarray(embedSharded.begin, embedSharded.end);
  t.ok(Buffer.from(a).equals(Buffer.from(b)), 'same bytes for the same tensor');

  const server = await startRangeServer(root);
  t.teardown(() => server.close());
  const overHttp = await readCheckpointTensors(openModelSource(`${server.url}sharded`));
  t.same([...overHttp.entries()], [...sharded.entries()], 'HTTP gives the same tensors');
  const shardGets = server.requests.filter((r) => r.method === 'GET' && r.path.endsWith('.safetensors'));
  t.equal(shardGets.length, 4, 'prefix and header of each shard');
  t.ok(shardGets.every((r) => r.range !== null), 'never a whole shard');
  t.ok(shardGets.some((r) => r.range === 'bytes=0-7'), 'the 8-byte prefix first');
});

t.test('refuses inconsistent shards', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'paraserve-st-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const source = openModelSource(pathToFileURL(dir).href);
  const one = contiguousHeader([{ name: 'x', dtype: 'F16', shape: [2] }, { name: 'y', dtype: 'F16', shape: [2] }]);
  const two = contiguousHeader([{ name: 'y', dtype: 'F16', shape: [2] }]);
  await writeFile(join(dir, 's1.safetensors'), safetensorsFile(one.header, one.dataBytes));
  await writeFile(join(dir, 's2.safetensors'), safetensorsFile(two.header, two.dataBytes));
  const index = (map: Record<string, string>) => writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: map }));

  await index({ x: 's1.safetensors', y: 's1.safetensors', z: 's1.safetensors' });
  await t.rejects(readCheckpointTensors(source), { name: 'ModelFormatError', file: 's1.safetensors', message: /maps tensor "z" to s1\.safetensors but s1\.safetensors has no such tensor/ });

  await index({ x: 's1.safetensors', y: 's2.safetensors' });
  await t.rejects(readCheckpointTensors(source), { name: 'ModelFormatError', message: /tensor "y" is in s1\.safetensors but model\.safetensors\.index\.json maps it to s2\.safetensors|tensor "y" appears in both/ });

  await index({ x: 's1.safetensors', y: 's1.safetensors', w: 's3.safetensors' });
  await t.rejects(readCheckpointTensors(source), { name: 'ModelFormatError', code: 'missing_file', file: 's3.safetensors', message: /missing file s3\.safetensors at file:/ });

  await index({ x: '../s1.safetensors' });
  await t.rejects(readCheckpointTensors(source), { message: /weight_map entry for "x" must be a relative file name/ });

  await writeFile(join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
  await t.rejects(readCheckpointTensors(source), { file: 'model.safetensors.index.json', message: /not valid JSON/ });

  await index({ x: 's1.safetensors', y: 's1.safetensors' });
  await truncate(join(dir, 's1.safetensors'), 6);
  await t.rejects(readCheckpointTensors(source), { file: 's1.safetensors', message: /s1\.safetensors: file is 6 bytes, too small/ });

  await rm(join(dir, 'model.safetensors.index.json'));
  await t.rejects(readCheckpointTensors(source), { code: 'missing_file', message: /missing file model\.safetensors at / });
});
