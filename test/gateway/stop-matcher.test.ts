// Text-level stop sequences: found across token boundaries, never returned, and nothing that
// could still become one is released early.
import t from 'tap';
import { StopMatcher } from '../../gateway/inference/stop-matcher.js';

function run(stops: string[], pieces: string[]): { out: string[]; stopped: boolean; flushed: string } {
  const m = new StopMatcher(stops);
  const out: string[] = [];
  let stopped = false;
  for (const p of pieces) {
    const step = m.push(p);
    out.push(step.text);
    if (step.stopped) {
      stopped = true;
      break;
    }
  }
  return { out, stopped, flushed: stopped ? '' : m.flush() };
}

t.test('no stop sequences pass everything through at once', async (t) => {
  t.same(run([], ['a', 'b']), { out: ['a', 'b'], stopped: false, flushed: '' });
});

t.test('a stop sequence inside one piece cuts it and is not returned', async (t) => {
  t.same(run(['END'], ['abcENDxyz']), { out: ['abc'], stopped: true, flushed: '' });
});

t.test('a stop sequence across token boundaries is found; its prefix is held back', async (t) => {
  const r = run(['</s>'], ['Hello <', '/', 's>', ' never']);
  t.same(r.out, ['Hello ', '', '']);
  t.equal(r.stopped, true);
});

t.test('held text that turns out not to be a stop is released', async (t) => {
  const r = run(['STOP'], ['ST', 'ART', '!']);
  t.same(r.out, ['', 'START', '!']);
  t.equal(r.stopped, false);
});

t.test('held prefix is released by flush when generation ends', async (t) => {
  const r = run(['STOP'], ['go ST']);
  t.same(r.out, ['go ']);
  t.equal(r.flushed, 'ST');
});

t.test('the earliest of several stop sequences wins', async (t) => {
  t.same(run(['b', 'a'], ['xxab']).out, ['xx']);
  t.same(run(['world', 'lo w'], ['hello world']).out, ['hel']);
});

t.test('overlapping prefixes: the longest possible prefix is held', async (t) => {
  const r = run(['aab'], ['a', 'a', 'a', 'b']);
  t.same(r.out, ['', '', 'a', '']);
  t.equal(r.stopped, true);
});

t.test('a stop at the very start yields empty text', async (t) => {
  t.same(run(['\n'], ['\nrest']), { out: [''], stopped: true, flushed: '' });
});

t.test('after stopping, further pushes return nothing', async (t) => {
  const m = new StopMatcher(['x']);
  t.same(m.push('ax'), { text: 'a', stopped: true });
  t.same(m.push('more'), { text: '', stopped: true });
  t.equal(m.flush(), '');
});

t.test('multi-character unicode stop split across pieces', async (t) => {
  const r = run(['😀!'], ['hi 😀', '!', 'tail']);
  t.same(r.out, ['hi ', '']);
  t.equal(r.stopped, true);
});
