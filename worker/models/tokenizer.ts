// Text in and out of a model, as Hugging Face defines it: tokenizer.json through
// @huggingface/tokenizers (byte-level BPE included) and the chat template of
// tokenizer_config.json through @huggingface/jinja. The gateway and workers only see token
// ids and strings; every way these files can be wrong becomes a ModelFormatError.
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelFormatError } from './errors.js';

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
}

type Json = Record<string, unknown>;

function isRecord(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseObject(text: string, file: string): Json {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${file}: not valid JSON: ${(e as Error).message}`, file, 'invalid');
  }
  if (!isRecord(json)) throw new ModelFormatError(`${file}: must be a JSON object`, file, 'invalid');
  return json;
}

/** bos_token / eos_token are a string or an AddedToken object { content }. */
function specialTokenText(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (isRecord(value) && typeof value.content === 'string') return value.content;
  return null;
}

/** chat_template is a string, or a list of { name, template } of which "default" is used. */
function chatTemplateText(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.find((t: unknown) => isRecord(t) && t.name === 'default');
    return isRecord(named) && typeof named.template === 'string' ? named.template : null;
  }
  return null;
}

function templateError(e: unknown): ModelFormatError {
  return new ModelFormatError(
    `${TOKENIZER_CONFIG_FILE}: chat_template failed: ${(e as Error).message}`,
    TOKENIZER_CONFIG_FILE,
    'invalid',
    { cause: e },
  );
}

export class ModelTokenizer {
  /** Ids that end generation according to the tokenizer (its eos_token); config.json may add more. */
  readonly eosTokenIds: number[];
  readonly bosTokenId: number | null;
  /** One past the largest token id the tokenizer knows (added tokens included). */
  readonly vocabSize: number;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly template: Template | null,
    private readonly bosToken: string | null,
    private readonly eosToken: string | null,
  ) {
    let maxId = -1;
    for (const id of tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.bosTokenId = bosToken === null ? null : (tokenizer.token_to_id(bosToken) ?? null);
    const eos = eosToken === null ? undefined : tokenizer.token_to_id(eosToken);
    this.eosTokenIds = eos === undefined ? [] : [eos];
  }

  /** Builds a tokenizer from the texts of tokenizer.json and tokenizer_config.json. */
  static fromJson(tokenizerJson: string, tokenizerConfigJson: string): ModelTokenizer {
    const json = parseObject(tokenizerJson, TOKENIZER_FILE);
    const config = parseObject(tokenizerConfigJson, TOKENIZER_CONFIG_FILE);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, config);
    } catch (e) {
      throw new ModelFormatError(`${TOKENIZER_FILE}: cannot load tokenizer: ${(e as Error).message}`, TOKENIZER_FILE, 'invalid', {
        cause: e,
      });
    }
    const bosToken = specialTokenText(config.bos_token);
    const eosToken = specialTokenText(config.eos_token);
    for (const [key, token] of [['bos_token', bosToken], ['eos_token', eosToken]] as const) {
      if (token !== null && tokenizer.token_to_id(token) === undefined) {
        throw new ModelFormatError(`${TOKENIZER_CONFIG_FILE}: ${key} ${JSON.stringify(token)} is not a token of ${TOKENIZER_FILE}`, TOKENIZER_CONFIG_FILE);
      }
    }
    const source = chatTemplateText(config.chat_template);
    let template: Template | null = null;
    if (source !== null) {
      try {
        template = new Template(source);
      } catch (e) {
        throw templateError(e);
      }
    }
    return new ModelTokenizer(tokenizer, template, bosToken, eosToken);
  }

  /** Token ids of `text`; addSpecialTokens applies the tokenizer's post-processor (e.g. a leading BOS). */
  encode(text: string, addSpecialTokens: boolean): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Text of `ids`; ids the tokenizer does not know (a model's padded vocabulary) decode to nothing. */
  decode(ids: number[], skipSpecialTokens: boolean): string {
    const known = ids.filter((id) => Number.isSafeInteger(id) && id >= 0 && this.tokenizer.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    return this.tokenizer.decode(known, { skip_special_tokens: skipSpecialTokens });
  }

  /** The prompt text of a chat; ModelFormatError when there is no template or it fails. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    if (this.template === null) {
      throw new ModelFormatError(`${TOKENIZER_CONFIG_FILE}: model has no chat_template`, TOKENIZER_CONFIG_FILE, 'unsupported');
    }
    try {
      return this.template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
      });
    } catch (e) {
      throw templateError(e);
    }
  }
}
