// Incremental detokenization and the token → text pipeline (stop sequences, usage counts).
import t from 'tap';
import { IncrementalDetokenizer, type TokenDecoder } from '../../gateway/inference/detokenizer.js';
import { completionText, type TextEvent } from '../../gateway/inference/generation.js';
import type { GenerationEvent } from '../../gateway/scheduler/loop.js';
import { testApp, registerTiny, tokenizerOf } from './fixtures/helpers.js';

/** SentencePiece-like: '▁' is a space, and the decoded text loses its leading space. */
const sentencePiece: TokenDecoder = {
  decode(ids) {
    const vocab: Record<number, string> = { 1: '▁The', 2: '▁cat', 3: '▁sat', 4: '.' };
    return ids.map((i) => vocab[i] ?? '').join('').replaceAll('▁', ' ').replace(/^ /, '');
  },
};

t.test('detokenizer keeps the leading space a lone decode would drop', async (t) => {
  const d = new IncrementalDetokenizer(sentencePiece, [1]);
  t.same([d.push(2), d.push(3), d.push(4), d.flush()], [' cat', ' sat', '.', '']);
});

t.test('with the tiny model tokenizer', async (t) => {
  const app = await testApp(t);
  await registerTiny(app);
  const tok = tokenizerOf(app);

  await t.test('streamed pieces join to the full decode and never split a character', async (t) => {
    const text = 'Hello world, héllo 😀! ñandú';
    const ids = tok.encode(text, false);
    const d = new IncrementalDetokenizer(tok, tok.encode('Say:', true));
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.flush());
    t.equal(pieces.join(''), text);
    t.notOk(pieces.some((p) => p.includes('\uFFFD')), 'no replacement characters');
    t.ok(pieces.filter((p) => p === '').length >= 3, 'bytes of multi-byte characters were held back');
  });

  await t.test('an incomplete character at the end is flushed as U+FFFD', async (t) => {
    const ids = tok.encode('😀', false);
    t.ok(ids.length > 1);
    const d = new IncrementalDetokenizer(tok, []);
    t.equal(d.push(ids[0]!), '');
    t.equal(d.flush(), '\uFFFD');
  });

  await t.test('special tokens (EOS) add no text', async (t) => {
    const d = new IncrementalDetokenizer(tok, []);
    t.equal(d.push(tok.encode('ok', false)[0]!) + d.push(tok.eosTokenIds[0]!) + d.flush(), tok.decode(tok.encode('ok', false).slice(0, 1), true));
  });

  async function collect(events: GenerationEvent[], stop: string[]): Promise<TextEvent[]> {
    async function* source(): AsyncGenerator<GenerationEvent> {
      yield* events;
    }
    const out: TextEvent[] = [];
    for await (const ev of completionText(source(), tok, { promptTokenIds: [1, 2, 3], stop })) out.push(ev);
    return out;
  }
  const tokens = (s: string): GenerationEvent[] => tok.encode(s, false).map((id) => ({ kind: 'token', id }));
  const text = (evs: TextEvent[]): string => evs.map((e) => (e.kind === 'text' ? e.text : '')).join('');

  await t.test('stop sequence across tokens: text before it, finish stop, tokens counted to it', async (t) => {
    const evs = await collect([...tokens('one two; three'), { kind: 'finish', reason: 'length', promptTokens: 3, completionTokens: 99 }], ['o; t']);
    t.equal(text(evs), 'one tw');
    const last = evs.at(-1);
    t.equal(last?.kind, 'done');
    if (last?.kind === 'done') {
      t.equal(last.finishReason, 'stop');
      t.ok(last.usage.completion_tokens < tok.encode('one two; three', false).length, 'stopped before the end');
      t.equal(last.usage.prompt_tokens, 3);
    }
  });

  await t.test('no stop: held-back prefix is released at the finish, reason from the worker', async (t) => {
    const n = tok.encode('abc x', false).length;
    const evs = await collect([...tokens('abc x'), { kind: 'finish', reason: 'length', promptTokens: 3, completionTokens: n }], ['xyz']);
    t.equal(text(evs), 'abc x');
    t.match(evs.at(-1), { kind: 'done', finishReason: 'length', usage: { prompt_tokens: 3, completion_tokens: n, total_tokens: 3 + n } });
  });

  await t.test('a token stream without a finish is a worker failure', async (t) => {
    await t.rejects(collect(tokens('abc'), []), { name: 'ApiError', statusCode: 502 });
  });
});
