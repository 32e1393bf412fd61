// The response objects of the OpenAI API, built from plain values: chat.completion,
// chat.completion.chunk, text_completion (whole and streamed). Field order and null fields
// follow OpenAI's own responses so strict clients parse them.

export type FinishReason = 'stop' | 'length';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** What every object of one completion shares. */
export interface CompletionMeta {
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
}

export function usage(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

export function chatCompletion(meta: CompletionMeta, content: string, finishReason: FinishReason, u: Usage) {
  return {
    id: meta.id,
    object: 'chat.completion' as const,
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [
      {
        index: 0,
        message: { role: 'assistant' as const, content, refusal: null },
        logprobs: null,
        finish_reason: finishReason,
      },
    ],
    usage: u,
  };
}

/** With include_usage every chunk carries `usage: null`, and a last chunk the totals. */
export function chatChunk(
  meta: CompletionMeta,
  delta: { role?: 'assistant'; content?: string },
  finishReason: FinishReason | null,
  includeUsage: boolean,
) {
  return {
    id: meta.id,
    object: 'chat.completion.chunk' as const,
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
    ...(includeUsage ? { usage: null } : {}),
  };
}

export function textCompletion(meta: CompletionMeta, text: string, finishReason: FinishReason, u: Usage) {
  return {
    id: meta.id,
    object: 'text_completion' as const,
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }],
    usage: u,
  };
}

export function textChunk(meta: CompletionMeta, text: string, finishReason: FinishReason | null, includeUsage: boolean) {
  return {
    id: meta.id,
    object: 'text_completion' as const,
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }],
    ...(includeUsage ? { usage: null } : {}),
  };
}

/** The last chunk of a stream with include_usage: no choices, only the totals. */
export function usageChunk(meta: CompletionMeta, object: 'chat.completion.chunk' | 'text_completion', u: Usage) {
  return {
    id: meta.id,
    object,
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [],
    usage: u,
  };
}
