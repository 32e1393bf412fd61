// The tokenizer of a synthetic model through ModelTokenizer: byte-level BPE round trips any
// text, special tokens and the Llama 3 chat template behave as in the real models, and broken
// tokenizer files are ModelFormatErrors.
import t from 'tap';
import { buildSyntheticTokenizer, LLAMA3_CHAT_TEMPLATE } from '../../worker/models/synthetic-tokenizer.js';
import { ModelTokenizer } from '../../worker/models/tokenizer.js';

const files = buildSyntheticTokenizer(512, 4096, 'byte-level');
const tok = ModelTokenizer.fromJson(files.tokenizerJson, files.tokenizerConfigJson);
const { '<|begin_of_text|>': bos, '<|eot_id|>': eot, '<|start_header_id|>': sh, '<|end_header_id|>': eh } = files.specialIds;

t.test('ids and vocabulary', async (t) => {
  t.equal(tok.vocabSize, 512);
  t.equal(tok.bosTokenId, bos);
  t.same(tok.eosTokenIds, [eot]);
  t.same([bos, eot], [507, 511], 'special tokens at the top ids');
});

t.test('byte-level round trip', async (t) => {
  const texts = [
    'The lighthouse keeper woke before the sun.',
    '  leading and trailing spaces  ',
    'line one\nline two\n\n\ttabbed',
    'héllo wörld — naïve café, 日本語, 🚀🦀',
    "It's 7:45; we'll see: $9.99!",
    'x',
  ];
  for (const text of texts) {
    const ids = tok.encode(text, false);
    t.ok(ids.every((id) => id >= 0 && id < 507), `plain ids for ${JSON.stringify(text)}`);
    t.equal(tok.decode(ids, false), text, `round trip ${JSON.stringify(text)}`);
  }
  const common = tok.encode(' the', false);
  t.equal(common.length, 1, 'merges learnt from the built-in text apply');
  t.ok((common[0] ?? 0) >= 256, 'a merged token');
  t.ok(tok.encode('The lighthouse keeper', false).length < 'The lighthouse keeper'.length, 'BPE compresses English');
});

t.test('special tokens', async (t) => {
  const ids = tok.encode('hello', true);
  t.equal(ids[0], bos, 'addSpecialTokens prepends BOS');
  t.same(ids.slice(1), tok.encode('hello', false));
  const marked = tok.encode('<|start_header_id|>user<|end_header_id|>', false);
  t.equal(marked[0], sh);
  t.equal(marked.at(-1), eh);
  t.equal(tok.decode([bos, ...tok.encode('hi', false), eot], false), '<|begin_of_text|>hi<|eot_id|>');
  t.equal(tok.decode([bos, ...tok.encode('hi', false), eot], true), 'hi');
});

t.test('decode edge cases', async (t) => {
  t.equal(tok.decode([], false), '');
  t.equal(tok.decode([100_000, -1, 1.5], false), '', 'unknown ids decode to nothing');
  const rocket = tok.encode('🚀', false);
  t.equal(rocket.length, 4, 'one token per byte of an unknown character');
  t.equal(tok.decode(rocket.slice(0, 2), false), '\ufffd', 'an incomplete UTF-8 sequence is a replacement character');
  t.equal(tok.decode(rocket, false), '🚀');
  // Filler tokens (the padded vocabulary) decode to text too.
  t.match(tok.decode([506], false), /^ [a-z]+$/);
});

t.test('chat template', async (t) => {
  const prompt = tok.applyChatTemplate(
    [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: ' Hi there \n' },
    ],
    true,
  );
  t.equal(
    prompt,
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n',
  );
  const ids = tok.encode(prompt, false);
  t.equal(ids[0], bos);
  t.equal(ids.filter((id) => id === eot).length, 2);
  t.equal(tok.decode(ids, false), prompt);
  t.notMatch(tok.applyChatTemplate([{ role: 'user', content: 'x' }], false), /assistant/);
});

t.test('qwen2 style: digits one by one, NFC', async (t) => {
  const q = buildSyntheticTokenizer(512, 4096, 'qwen2');
  const qt = ModelTokenizer.fromJson(q.tokenizerJson, q.tokenizerConfigJson);
  t.equal(qt.encode('2024', false).length, 4, 'each digit its own token');
  t.same(qt.encode('cafe\u0301', false), qt.encode('caf\u00e9', false), 'NFC before splitting');
  for (const text of ['The lighthouse keeper, 1984.', "IT'S a\r\n\nnew line", '日本語 🚀']) {
    t.equal(qt.decode(qt.encode(text, false), false), text, `round trip ${JSON.stringify(text)}`);
  }
  t.same(qt.encode('hi', true)[0], qt.bosTokenId);
});

t.test('errors', async (t) => {
  const config = JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>;
  const withConfig = (patch: Record<string, unknown>) => JSON.stringify({ ...config, ...patch });

  t.throws(() => ModelTokenizer.fromJson('{', files.tokenizerConfigJson), { name: 'ModelFormatError', file: 'tokenizer.json', message: /tokenizer\.json: not valid JSON/ });
  t.throws(() => ModelTokenizer.fromJson('{"model": {"type": "Nope"}}', files.tokenizerConfigJson), { name: 'ModelFormatError', file: 'tokenizer.json', message: /cannot load tokenizer/ });
  t.throws(() => ModelTokenizer.fromJson(files.tokenizerJson, '[]'), { file: 'tokenizer_config.json', message: /must be a JSON object/ });
  t.throws(() => ModelTokenizer.fromJson(files.tokenizerJson, withConfig({ bos_token: '<s>' })), { file: 'tokenizer_config.json', message: /bos_token "<s>" is not a token of tokenizer\.json/ });
  t.throws(() => ModelTokenizer.fromJson(files.tokenizerJson, withConfig({ chat_template: '{% for m in messages %}' })), { name: 'ModelFormatError', file: 'tokenizer_config.json', message: /chat_template failed/ });

  const failing = ModelTokenizer.fromJson(files.tokenizerJson, withConfig({ chat_template: "{{ raise_exception('roles must alternate') }}" }));
  t.throws(() => failing.applyChatTemplate([{ role: 'user', content: 'x' }], true), { name: 'ModelFormatError', message: /roles must alternate/ });

  const none = ModelTokenizer.fromJson(files.tokenizerJson, withConfig({ chat_template: null }));
  t.throws(() => none.applyChatTemplate([{ role: 'user', content: 'x' }], true), { name: 'ModelFormatError', code: 'unsupported', message: /no chat_template/ });

  const listed = ModelTokenizer.fromJson(files.tokenizerJson, withConfig({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: LLAMA3_CHAT_TEMPLATE }] }));
  t.match(listed.applyChatTemplate([{ role: 'user', content: 'x' }], false), /^<\|begin_of_text\|><\|start_header_id\|>user/);
});
