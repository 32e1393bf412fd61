// From a validated OpenAI request to what the worker is asked to do: prompt token ids, the token
// budget, sampling and stop conditions. Everything a client can get wrong beyond the schema
// (unsupported options, prompts too long for the context) is rejected here with a 400 that
// names the parameter, before any worker is involved.
import { ModelFormatError } from '../../worker/models/errors.js';
import { badRequest } from '../errors.js';
import type { ChatCompletionBody, CompletionBody } from '../schemas/openai.js';
import type { ServingModel } from './catalog.js';

/**
 * Completion tokens when the request sets no limit: the rest of the context, but at most this.
 * OpenAI lets chat run to the end of the context; paraserve caps the default because random-
 * weight demo models rarely sample EOS, and a forgotten max_tokens would hold a worker for the
 * whole context. Clients that want more ask for it.
 */
export const DEFAULT_MAX_TOKENS = 256;

export interface CompletionPlan {
  promptTokenIds: number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number | null;
  /** Text stop sequences, matched across token boundaries. */
  stop: string[];
  /** Token ids that end generation on the worker (the model's EOS ids). */
  stopTokenIds: number[];
  stream: boolean;
  includeUsage: boolean;
}

type CommonBody = ChatCompletionBody | CompletionBody;

function rejectUnsupported(body: CommonBody): void {
  if (body.n != null && body.n !== 1) {
    throw badRequest(
      `n=${body.n} is not supported: paraserve returns one choice per request; send ${body.n} requests instead`,
      'n',
      'unsupported_value',
    );
  }
  if (body.presence_penalty) throw badRequest('presence_penalty is not supported yet; omit it or send 0', 'presence_penalty', 'unsupported_parameter');
  if (body.frequency_penalty) throw badRequest('frequency_penalty is not supported yet; omit it or send 0', 'frequency_penalty', 'unsupported_parameter');
}

function stopSequences(stop: CommonBody['stop']): string[] {
  if (stop == null) return [];
  return typeof stop === 'string' ? [stop] : stop;
}

function contextExceeded(model: ServingModel, prompt: number, completion: number, param: 'messages' | 'prompt'): never {
  throw badRequest(
    `This model's maximum context length is ${model.contextLength} tokens. However, you requested ` +
      `${prompt + completion} tokens (${prompt} in the ${param}, ${completion} in the completion). ` +
      `Please reduce the length of the ${param} or completion.`,
    param,
    'context_length_exceeded',
  );
}

function tokenBudget(model: ServingModel, promptTokens: number, requested: number | null, param: 'messages' | 'prompt'): number {
  if (requested !== null) {
    if (promptTokens + requested > model.contextLength) contextExceeded(model, promptTokens, requested, param);
    return requested;
  }
  const remaining = model.contextLength - promptTokens;
  if (remaining < 1) contextExceeded(model, promptTokens, 1, param);
  return Math.min(remaining, DEFAULT_MAX_TOKENS);
}

function plan(body: CommonBody, model: ServingModel, promptTokenIds: number[], requested: number | null, param: 'messages' | 'prompt'): CompletionPlan {
  if (promptTokenIds.length === 0) throw badRequest(`the ${param} must not be empty`, param);
  return {
    promptTokenIds,
    maxTokens: tokenBudget(model, promptTokenIds.length, requested, param),
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    seed: body.seed ?? null,
    stop: stopSequences(body.stop),
    stopTokenIds: model.stopTokenIds,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
  };
}

function messageText(content: ChatCompletionBody['messages'][number]['content']): string {
  if (content === null) return '';
  if (typeof content === 'string') return content;
  return content.map((p) => p.text).join('\n');
}

export function planChat(body: ChatCompletionBody, model: ServingModel): CompletionPlan {
  rejectUnsupported(body);
  if (body.logprobs) throw badRequest('logprobs are not supported yet', 'logprobs', 'unsupported_parameter');
  if (body.top_logprobs) throw badRequest('top_logprobs are not supported yet', 'top_logprobs', 'unsupported_parameter');
  if (body.tools && body.tools.length > 0) throw badRequest('tools are not supported yet', 'tools', 'unsupported_parameter');
  if (body.response_format && body.response_format.type !== 'text') {
    throw badRequest(`response_format '${body.response_format.type}' is not supported; only 'text'`, 'response_format.type', 'unsupported_value');
  }
  const messages = body.messages.map((m) => ({
    role: m.role === 'developer' ? ('system' as const) : m.role,
    content: messageText(m.content),
  }));
  let rendered: string;
  try {
    rendered = model.tokenizer.applyChatTemplate(messages, true);
  } catch (e) {
    if (e instanceof ModelFormatError && e.code === 'unsupported') {
      throw badRequest(`model '${model.name}' cannot chat (${e.message}); use /v1/completions`, 'messages', 'no_chat_template');
    }
    const why = e instanceof Error ? e.message : String(e);
    throw badRequest(`the chat template of model '${model.name}' could not render these messages: ${why}`, 'messages');
  }
  // The template writes the special tokens (BOS included) itself.
  const ids = model.tokenizer.encode(rendered, false);
  return plan(body, model, ids, body.max_completion_tokens ?? body.max_tokens ?? null, 'messages');
}

export function planCompletion(body: CompletionBody, model: ServingModel): CompletionPlan {
  rejectUnsupported(body);
  if (body.logprobs) throw badRequest('logprobs are not supported yet', 'logprobs', 'unsupported_parameter');
  if (body.echo) throw badRequest('echo is not supported yet', 'echo', 'unsupported_parameter');
  if (body.best_of != null && body.best_of !== 1) throw badRequest('best_of > 1 is not supported', 'best_of', 'unsupported_value');
  if (body.suffix) throw badRequest('suffix is not supported', 'suffix', 'unsupported_parameter');
  if (Array.isArray(body.prompt) && body.prompt.length > 1) {
    throw badRequest(`prompt holds ${body.prompt.length} strings; paraserve takes one prompt per request`, 'prompt', 'unsupported_value');
  }
  const text = Array.isArray(body.prompt) ? (body.prompt[0] ?? '') : body.prompt;
  return plan(body, model, model.tokenizer.encode(text, true), body.max_tokens ?? null, 'prompt');
}
