// What the gateway's LoadStage calls carry besides the stage, against in-process fake workers
// (real gRPC): each stage's tensor layout, from the headers registration read (so a worker
// fetches without reading them), and the prompt length of the request waiting for the load (so
// runtime init warms the stage up for it); a consolidation, which no request waits for, asks
// for no extra warm-up.
import t from 'tap';
import { parseModelConfig } from '../../worker/models/config.js';
import { readCheckpointTensors } from '../../worker/models/safetensors.js';
import { openModelSource } from '../../worker/models/source.js';
import { planStageTensors } from '../../worker/models/stage-plan.js';
import { addFakeWorker, MODEL, startCluster, tinyModelUri } from './fixtures/helpers.js';

t.test("each stage's load carries its tensor layout and the waiting prompt's length", async (t) => {
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9 }, { forcedPipelineDegree: 2 });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9 });
  const res = await fetch(`${c.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 2 }),
  });
  t.equal(res.status, 200, await res.text());
  const promptTokens = c.worker.generates[0]?.promptTokenIds.length ?? 0;
  t.ok(promptTokens > 1);

  const model = c.app.catalog.get(MODEL)!;
  const config = parseModelConfig(JSON.parse(model.configJson) as unknown);
  const checkpoint = await readCheckpointTensors(openModelSource(await tinyModelUri()));
  for (const load of [c.worker.loads[0]!, w2.loads[0]!]) {
    const range = load.stage!;
    const expected = planStageTensors(checkpoint, config, range);
    t.same(
      load.tensors.map((e) => [e.name, e.file, e.begin, e.end, e.shape]),
      expected.map((e) => [e.name, e.file, e.begin, e.end, e.shape]),
      `stage ${range.stageIndex}: its tensors, where the headers put them`,
    );
    t.same(load.warmUpTokenCounts, [promptTokens], `stage ${range.stageIndex}: warmed up for the waiting prompt`);
  }

  while (c.worker.loads.length < 2) await new Promise((r) => setTimeout(r, 10));
  const consolidation = c.worker.loads[1]!;
  t.match(consolidation.stage, { stageCount: 1, hasEmbeddings: true, hasHead: true });
  t.equal(consolidation.tensors.length, checkpoint.size, 'the whole model consolidates with every tensor given');
  t.same(consolidation.warmUpTokenCounts, [], 'no request waits for the consolidation');
});
