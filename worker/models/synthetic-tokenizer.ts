// The small tokenizer that make-model ships with every synthetic checkpoint: a byte-level BPE
// in the GPT-2 / Llama 3 format, so it exercises the same code paths as a real model's
// tokenizer and loads both in @huggingface/tokenizers and in the Rust `tokenizers` library
// (and so in transformers). Merges are learnt deterministically from a built-in English text;
// the vocabulary is padded with pronounceable filler words up to the model's vocab_size so that
// every id a random-weight model samples decodes to some text. Qwen2 models get Qwen2's own
// pre-tokenizer (NFC, digits split one by one), because transformers' Qwen2Tokenizer imposes
// that pipeline whatever tokenizer.json says: with it, all three libraries give the same ids.

/** Special tokens, Llama 3 names, at the top ids of the vocabulary in this order. */
export const SPECIAL_TOKENS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'] as const;
export const BOS_TOKEN = '<|begin_of_text|>';
export const END_OF_TEXT_TOKEN = '<|end_of_text|>';
export const EOT_TOKEN = '<|eot_id|>';

/** Merges learnt at most; the rest of the vocabulary is filler. */
const MAX_MERGES = 240;

/** Llama 3 Instruct's template (the same text as in its tokenizer_config.json). */
export const LLAMA3_CHAT_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const TRAINING_TEXT = `The lighthouse keeper woke before the sun, as he had done every morning for thirty years.
He climbed the 112 steps of the tower, cleaned the great lens, and wrote the weather in his book:
wind from the west, light rain, the sea calm enough for the fishing boats to leave at six.
In the village below, the baker was already pulling bread from the oven, and the smell of it
drifted up the hill with the smoke. Children walked to school in pairs, talking about the
storm that had kept them inside all of the last week. A teacher asked them what they had
learned from it, and one of them said that the wind is strongest where nothing stands in its way.
The model reads the question, thinks about the answer, and then writes it one word at a time.
Each word depends on the words before it, so the order of the words matters as much as the words
themselves. When the answer is finished, the model stops and waits for the next question.
Good answers are short, clear and correct; they say what is known and admit what is not.
If you want to travel far, you should pack light, read the map twice, and leave early.
The train left the station at 7:45 and arrived in the city three hours later, on time.
There were 24 people in the carriage: some were reading, some were sleeping, and one was
writing a long letter to a friend who lived on the other side of the world.
What is the capital of France? The capital of France is Paris. How many days are in a week?
There are seven days in a week. Can you help me? Yes, of course, I would be happy to help you.
Thank you for your patience. Please let me know if you have any other questions.
The garden needs water every evening in summer, but in winter the rain does the work alone.
Numbers such as 1, 2, 3, 10, 100 and 2024 appear in text, and so do dates and prices like $9.99.
She said, "It's not the distance that tires you, it's the stone in your shoe." We'll see.
They're going to the market, and I've heard that you'd like to come along as well.`;

/** GPT-2's map from the 256 byte values to printable characters (so every byte is a symbol). */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map = new Array<string>(256);
  for (const b of printable) map[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (map[b] === undefined) map[b] = String.fromCodePoint(256 + n++);
  }
  return map;
}

/** The pre-tokenizer split of the ByteLevel pre-tokenizer (use_regex: true). */
const BYTE_LEVEL_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function byteLevelWords(text: string, byteChars: string[]): string[][] {
  const encoder = new TextEncoder();
  return (text.match(BYTE_LEVEL_SPLIT) ?? []).map((word) => Array.from(encoder.encode(word), (b) => byteChars[b] ?? ''));
}

/**
 * Learns up to maxMerges BPE merges from text: each round merges the most frequent adjacent
 * pair (ties: the smaller pair in string order), until no pair occurs twice.
 */
export function learnMerges(text: string, maxMerges: number, byteChars: string[]): [string, string][] {
  const counts = new Map<string, number>();
  for (const word of byteLevelWords(text, byteChars)) {
    const key = word.join('\u0000');
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const words = [...counts].map(([key, count]) => ({ symbols: key.split('\u0000'), count }));
  const merges: [string, string][] = [];
  while (merges.length < maxMerges) {
    const pairs = new Map<string, number>();
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = `${symbols[i]}\u0000${symbols[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best: string | null = null;
    let bestCount = 1;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null) break;
    const [a = '', b = ''] = best.split('\u0000');
    merges.push([a, b]);
    for (const word of words) {
      const out: string[] = [];
      for (let i = 0; i < word.symbols.length; i++) {
        if (word.symbols[i] === a && word.symbols[i + 1] === b) {
          out.push(a + b);
          i++;
        } else {
          out.push(word.symbols[i] ?? '');
        }
      }
      word.symbols = out;
    }
  }
  return merges;
}

const SYLLABLES: readonly string[] = [...'bcdfghjklmnprstvwz'].flatMap((c) => [...'aeiou'].map((v) => c + v));

/** Filler words " ba", " be", …, " baba", …: the n-th of them (space written as byte-level "Ġ"). */
function fillerWord(n: number, space: string): string {
  const syllables = SYLLABLES;
  let length = 1;
  let count = syllables.length;
  let rest = n;
  while (rest >= count) {
    rest -= count;
    length++;
    count *= syllables.length;
  }
  let word = '';
  for (let i = 0; i < length; i++) {
    word = (syllables[rest % syllables.length] ?? '') + word;
    rest = Math.floor(rest / syllables.length);
  }
  return space + word;
}

/** 'byte-level': GPT-2 / Llama 3 ByteLevel pre-tokenizer; 'qwen2': Qwen2's split regex and NFC. */
export type TokenizerStyle = 'byte-level' | 'qwen2';

const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function pipeline(style: TokenizerStyle): { normalizer: unknown; pre_tokenizer: unknown } {
  if (style === 'byte-level') {
    return { normalizer: null, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true } };
  }
  return {
    normalizer: { type: 'NFC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: QWEN2_SPLIT }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    },
  };
}

export interface SyntheticTokenizerFiles {
  tokenizerJson: string;
  tokenizerConfigJson: string;
  /** Id of each special token. */
  specialIds: Record<(typeof SPECIAL_TOKENS)[number], number>;
}

/**
 * tokenizer.json and tokenizer_config.json of exactly vocabSize tokens: 256 byte symbols
 * (id = byte value), learnt merges, filler words, and the special tokens at the top ids.
 */
export function buildSyntheticTokenizer(vocabSize: number, modelMaxLength: number, style: TokenizerStyle): SyntheticTokenizerFiles {
  const byteChars = bytesToUnicode();
  const regular = vocabSize - SPECIAL_TOKENS.length;
  if (regular < 256) throw new RangeError(`vocab_size ${vocabSize} is too small for a byte-level tokenizer (need ${256 + SPECIAL_TOKENS.length})`);

  const vocab = new Map<string, number>();
  byteChars.forEach((c, b) => vocab.set(c, b));
  const merges: string[] = [];
  for (const [a, b] of learnMerges(TRAINING_TEXT, Math.min(MAX_MERGES, regular - 256), byteChars)) {
    merges.push(`${a} ${b}`);
    if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  }
  const space = byteChars[0x20] ?? ' ';
  for (let n = 0; vocab.size < regular; n++) {
    const word = fillerWord(n, space);
    if (!vocab.has(word)) vocab.set(word, vocab.size);
  }

  const specialIds = Object.fromEntries(SPECIAL_TOKENS.map((t, i) => [t, regular + i])) as SyntheticTokenizerFiles['specialIds'];
  const bos = specialIds[BOS_TOKEN];
  const addedTokens = SPECIAL_TOKENS.map((content) => ({
    id: specialIds[content],
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    ...pipeline(style),
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: BOS_TOKEN, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: BOS_TOKEN, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: BOS_TOKEN, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [BOS_TOKEN]: { id: BOS_TOKEN, ids: [bos], tokens: [BOS_TOKEN] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const tokenizerConfig = {
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...rest }) => [String(id), rest])),
    bos_token: BOS_TOKEN,
    eos_token: EOT_TOKEN,
    chat_template: LLAMA3_CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    model_input_names: ['input_ids', 'attention_mask'],
    model_max_length: modelMaxLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return {
    tokenizerJson: JSON.stringify(tokenizer),
    tokenizerConfigJson: JSON.stringify(tokenizerConfig, null, 2),
    specialIds,
  };
}
