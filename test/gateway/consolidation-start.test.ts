// When a pipeline's consolidation starts, against in-process fake workers (real gRPC): not while
// a request that waited on the pipeline's load is still before its first token — the
// whole-model load would compete with that prefill on stage 0's worker — but as soon as the
// first token is out (the request still streaming), or once such a request ended without one.
import t from 'tap';
import type { FakeWorker } from './fixtures/fake-worker.js';
import { addFakeWorker, MODEL, startCluster } from './fixtures/helpers.js';

/** LoadStage calls for the whole model (the consolidation's), on any of the workers. */
const wholeModelLoads = (workers: FakeWorker[]): number => workers.flatMap((w) => w.loads).filter((l) => l.stage?.stageCount === 1).length;

/** Waits until `done` holds (polling), or fails the test after `ms`. */
async function until(done: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A streamed completion left open; abort() ends it from the client's side. */
function openStream(url: string): { abort: () => void; response: Promise<Response | null> } {
  const controller = new AbortController();
  const response = fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 4, stream: true }),
    signal: controller.signal,
  }).catch(() => null);
  return { abort: () => controller.abort(), response };
}

t.test('consolidation waits for the cold request to get its first token', async (t) => {
  // Stage 0's Generate stalls before any token: the cold request stays in its prefill.
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, script: () => ({ tokens: [], end: 'stall' }) }, { forcedPipelineDegree: 2 });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9 });
  const workers = [c.worker, w2];
  const cold = openStream(c.url);
  await until(() => c.worker.generates.length === 1);
  t.same(workers.map((w) => w.loads.length), [1, 1], 'one stage loaded on each worker');
  await new Promise((r) => setTimeout(r, 300));
  t.equal(wholeModelLoads(workers), 0, 'no whole-model load while the request waits for its first token');

  cold.abort();
  await until(() => wholeModelLoads(workers) === 1);
  t.match(c.worker.loads[1], { stage: { stageIndex: 0, stageCount: 1, hasEmbeddings: true, hasHead: true } }, "once it ended, the model loads whole on stage 0's worker");
});

t.test('consolidation starts once the first token is out, while the request still streams', async (t) => {
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, script: () => ({ tokens: [7], end: 'stall' }) }, { forcedPipelineDegree: 2 });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9 });
  const cold = openStream(c.url);
  t.teardown(() => cold.abort());
  await until(() => wholeModelLoads([c.worker, w2]) === 1);
  t.equal(c.worker.cancelled.length, 0, 'the request is still streaming');
  t.equal((await cold.response)?.status, 200);
});
