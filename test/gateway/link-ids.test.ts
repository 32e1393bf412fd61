// The gateway's part in a pipeline's device links, against in-process fake workers: for a
// hop between two workers that report device links it gets an id from the sending stage's
// worker (CreateLinkId) and passes it to both stages in LoadStage (link_id_to_next on the
// sender, link_id_from_previous on the receiver); for a hop where either worker has none it
// asks nobody and both stages load without (their activations go over gRPC).
import t from 'tap';
import { addFakeWorker, MODEL, startCluster } from './fixtures/helpers.js';

async function complete(url: string): Promise<{ status: number; path: string | null }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'Once', max_tokens: 2 }),
  });
  await res.arrayBuffer();
  return { status: res.status, path: res.headers.get('x-paraserve-path') };
}

t.test('a hop between two workers with device links gets one id, passed to both stages', async (t) => {
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, deviceLinks: true }, { forcedPipelineDegree: 2 });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9, deviceLinks: true });
  const r = await complete(c.url);
  t.equal(r.status, 200);
  t.match(r.path, /^cold;k=2;workers=w1,w2;/);
  const [first] = c.worker.loads;
  const [second] = w2.loads;
  t.equal(c.worker.linkIdsMade, 1, 'the sending stage\'s worker made the id');
  t.equal(w2.linkIdsMade, 0, 'the last stage sends to nobody');
  t.equal(first?.linkIdToNext.toString(), 'w1/link-1');
  t.equal(first?.linkIdFromPrevious.length, 0);
  t.equal(second?.linkIdFromPrevious.toString(), 'w1/link-1', 'the receiver joins the same link');
  t.equal(second?.linkIdToNext.length, 0);
});

t.test('a hop where one worker has no device links asks for no id', async (t) => {
  const c = await startCluster(t, { id: 'w1', freeBytes: 4e9, deviceLinks: true }, { forcedPipelineDegree: 2 });
  const w2 = await addFakeWorker(t, c, { id: 'w2', freeBytes: 3e9, deviceLinks: false });
  const r = await complete(c.url);
  t.equal(r.status, 200);
  t.equal(c.worker.linkIdsMade + w2.linkIdsMade, 0, 'no CreateLinkId: the receiver could never join');
  for (const load of [...c.worker.loads, ...w2.loads]) {
    t.same([load.linkIdToNext.length, load.linkIdFromPrevious.length], [0, 0]);
  }
});
