// Registering a model prepares its cold start: the stage plan is made from the checkpoint's
// headers that registration read, not by its first request, which would otherwise read them
// from the store again. Shown by a pipelined first request that is served although the checkpoint
// went away after registration (the fake workers do not read it; planning at request time
// would fail with a 503).
import { cp, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';
import { addFakeWorker, startCluster, tempDir, tinyModelUri } from './fixtures/helpers.js';

t.test("registration reads the stage plan, so the first request does not need the checkpoint's headers", async (t) => {
  const dir = path.join(await tempDir(t), 'model');
  await cp(fileURLToPath(await tinyModelUri()), dir, { recursive: true });
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9 }, { forcedPipelineDegree: 2, consolidate: false });
  await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9 });
  const registered = await c.app.inject({ method: 'POST', url: '/admin/models', payload: { name: 'copy', source: pathToFileURL(dir).href, files: null, ttftSloMs: null } });
  t.equal(registered.statusCode, 201, registered.body);
  await rm(path.join(dir, 'model.safetensors'));
  const res = await fetch(`${c.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'copy', prompt: 'Once', max_tokens: 2 }),
  });
  const body = await res.text();
  t.equal(res.status, 200, body);
  t.match(res.headers.get('x-paraserve-path'), /^cold;k=2;/, 'served by a 2-stage pipeline planned at registration');
});
