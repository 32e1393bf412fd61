// untilAborted, shared by the worker's loader and the gateway's scheduler loop: the promise's
// outcome while the signal stays quiet, the abort's reason as soon as it fires (the promise
// itself runs on, unobserved), and at once for a signal aborted before the call.
import t from 'tap';
import { untilAborted } from '../../worker/daemon/until-aborted.js';

t.test('the promise\'s value or error while the signal stays quiet', async (t) => {
  const quiet = new AbortController().signal;
  t.equal(await untilAborted(Promise.resolve(7), quiet), 7);
  await t.rejects(untilAborted(Promise.reject(new Error('boom')), quiet), { message: 'boom' });
});

t.test('the abort\'s reason as soon as the signal fires, for a promise that never settles', async (t) => {
  const controller = new AbortController();
  const waiting = untilAborted(new Promise<never>(() => undefined), controller.signal);
  controller.abort(new Error('load given up'));
  await t.rejects(waiting, { message: 'load given up' });
});

t.test('a signal aborted before the call rejects at once, with reason() when given', async (t) => {
  const controller = new AbortController();
  controller.abort(new Error('already'));
  await t.rejects(untilAborted(Promise.resolve(1), controller.signal), { message: 'already' });
  await t.rejects(
    untilAborted(Promise.resolve(1), controller.signal, () => new Error('the client went away')),
    { message: 'the client went away' },
  );
});

t.test('settling first wins: a later abort changes nothing', async (t) => {
  const controller = new AbortController();
  const value = await untilAborted(Promise.resolve('done'), controller.signal);
  controller.abort(new Error('too late'));
  t.equal(value, 'done');
});
