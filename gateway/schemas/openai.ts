// Request bodies of the OpenAI-compatible API, as TypeBox schemas: Fastify validates with them
// and the handlers take their types from them. Optional fields also accept null, as OpenAI's
// clients send it. Fields OpenAI defines that paraserve cannot honour are accepted here and
// rejected with a clear 400 in inference/prepare.ts; unknown fields are ignored.
import { Type, type Static, type TSchema } from '@sinclair/typebox';

export function Nullable<T extends TSchema>(schema: T) {
  return Type.Union([schema, Type.Null()]);
}

/** A string enum as one JSON schema `enum` (one clear validation error, not an anyOf per value). */
export function StringEnum<const T extends readonly string[]>(values: T) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values] });
}

const Opt = <T extends TSchema>(schema: T) => Type.Optional(Nullable(schema));

export const MAX_STOP_SEQUENCES = 4;

/** Matching holds back up to this many characters per token; longer stops serve no one. */
export const MAX_STOP_LENGTH = 256;

const StopString = Type.String({ minLength: 1, maxLength: MAX_STOP_LENGTH });
const Stop = Type.Union([StopString, Type.Array(StopString, { maxItems: MAX_STOP_SEQUENCES })]);

const StreamOptions = Type.Object({ include_usage: Type.Optional(Nullable(Type.Boolean())) });

/** Shared by chat and completions. */
const samplingFields = {
  model: Type.String({ minLength: 1 }),
  max_tokens: Opt(Type.Integer({ minimum: 1 })),
  temperature: Opt(Type.Number({ minimum: 0, maximum: 2 })),
  top_p: Opt(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  n: Opt(Type.Integer({ minimum: 1 })),
  stream: Opt(Type.Boolean()),
  stream_options: Opt(StreamOptions),
  stop: Opt(Stop),
  seed: Opt(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  user: Opt(Type.String()),
  presence_penalty: Opt(Type.Number({ minimum: -2, maximum: 2 })),
  frequency_penalty: Opt(Type.Number({ minimum: -2, maximum: 2 })),
};

export const TextPart = Type.Object({ type: Type.Literal('text'), text: Type.String() });

export const ChatMessage = Type.Object({
  role: StringEnum(['system', 'developer', 'user', 'assistant'] as const),
  content: Nullable(Type.Union([Type.String(), Type.Array(TextPart)])),
  name: Opt(Type.String()),
});

export const ChatCompletionBody = Type.Object({
  ...samplingFields,
  messages: Type.Array(ChatMessage, { minItems: 1 }),
  max_completion_tokens: Opt(Type.Integer({ minimum: 1 })),
  logprobs: Opt(Type.Boolean()),
  top_logprobs: Opt(Type.Integer({ minimum: 0, maximum: 20 })),
  tools: Opt(Type.Array(Type.Unknown())),
  response_format: Opt(Type.Object({ type: Type.String() })),
});
export type ChatCompletionBody = Static<typeof ChatCompletionBody>;

export const CompletionBody = Type.Object({
  ...samplingFields,
  prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })]),
  logprobs: Opt(Type.Integer({ minimum: 0, maximum: 5 })),
  echo: Opt(Type.Boolean()),
  best_of: Opt(Type.Integer({ minimum: 1 })),
  suffix: Opt(Type.String()),
});
export type CompletionBody = Static<typeof CompletionBody>;

/** `*` also matches names with slashes (org/model). */
export const ModelParams = Type.Object({ '*': Type.String({ minLength: 1 }) });
export type ModelParams = Static<typeof ModelParams>;

export const ModelObject = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer(),
  owned_by: Type.String(),
});
export const ModelList = Type.Object({ object: Type.Literal('list'), data: Type.Array(ModelObject) });
