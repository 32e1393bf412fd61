// Runs one planned completion and answers it, whole or as an SSE stream — the part both
// /v1/chat/completions and /v1/completions share. Errors before the first text piece are
// ordinary HTTP errors (the stream has not started); after it they become an SSE error event.
// The client closing its connection aborts the request, which cancels the worker's call.
// Every response carries `x-paraserve-request-id` (GET /admin/traces/:id has its trace); a
// whole response also `x-paraserve-path` and `x-paraserve-timing`, a stream the same headers
// with what is known when they go out (path, queue, load, first token).
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyBaseLogger, FastifyReply } from 'fastify';
import { ApiError, internalError } from '../errors.js';
import type { SchedulerLoop } from '../scheduler/loop.js';
import { pathHeader, timingHeader, type RequestTracer } from '../scheduler/trace.js';
import type { ServingModel } from './catalog.js';
import { completionText, type TextEvent } from './generation.js';
import {
  chatChunk,
  chatCompletion,
  textChunk,
  textCompletion,
  usageChunk,
  type CompletionMeta,
} from './openai-format.js';
import type { CompletionPlan } from './prepare.js';
import { SSE_DONE, SSE_HEADERS, sseData } from './sse.js';

export type CompletionKind = 'chat' | 'text';

export interface CompletionContext {
  kind: CompletionKind;
  model: ServingModel;
  plan: CompletionPlan;
  scheduler: SchedulerLoop;
  reply: FastifyReply;
  log: FastifyBaseLogger;
  /** Gateway clock when the request arrived. */
  arrivalMs: number;
}

function newMeta(kind: CompletionKind, model: string): CompletionMeta {
  const prefix = kind === 'chat' ? 'chatcmpl' : 'cmpl';
  return { id: `${prefix}-${randomUUID().replaceAll('-', '')}`, created: Math.floor(Date.now() / 1000), model };
}

/** Aborts when the client goes away before the response has been written. */
function abortOnDisconnect(reply: FastifyReply): AbortController {
  const controller = new AbortController();
  const res = reply.raw;
  const onClose = (): void => {
    if (!res.writableEnded) controller.abort();
  };
  if (res.destroyed) controller.abort();
  else res.once('close', onClose);
  return controller;
}

/** Header names of a request's explanation. */
export const TRACE_HEADERS = {
  requestId: 'x-paraserve-request-id',
  path: 'x-paraserve-path',
  timing: 'x-paraserve-timing',
} as const;

function explain(reply: FastifyReply, tracer: RequestTracer, upToFirstToken: boolean): void {
  const trace = tracer.snapshot();
  const path = pathHeader(trace);
  if (path !== null) reply.header(TRACE_HEADERS.path, path);
  const timing = timingHeader(trace, upToFirstToken);
  if (timing !== '') reply.header(TRACE_HEADERS.timing, timing);
}

export async function serveCompletion(ctx: CompletionContext): Promise<unknown> {
  const { kind, model, plan } = ctx;
  const meta = newMeta(kind, model.name);
  const tracer = ctx.scheduler.traces.start(meta.id, model.name, ctx.arrivalMs);
  ctx.reply.header(TRACE_HEADERS.requestId, meta.id);
  const abort = abortOnDisconnect(ctx.reply);
  const tokens = ctx.scheduler.generate(
    model,
    {
      requestId: meta.id,
      promptTokenIds: plan.promptTokenIds,
      maxTokens: plan.maxTokens,
      temperature: plan.temperature,
      topP: plan.topP,
      seed: plan.seed,
      stopTokenIds: plan.stopTokenIds,
      arrivalMs: ctx.arrivalMs,
      trace: tracer,
    },
    abort.signal,
  );
  const events = completionText(tokens, model.tokenizer, plan);

  if (!plan.stream) {
    let text = '';
    for await (const ev of events) {
      if (ev.kind === 'text') {
        text += ev.text;
      } else {
        explain(ctx.reply, tracer, false);
        return kind === 'chat'
          ? chatCompletion(meta, text, ev.finishReason, ev.usage)
          : textCompletion(meta, text, ev.finishReason, ev.usage);
      }
    }
    throw internalError();
  }

  const first = await events.next();
  explain(ctx.reply, tracer, true);
  ctx.reply.headers(SSE_HEADERS);
  return ctx.reply.send(Readable.from(sseStream(kind, meta, first, events, plan.includeUsage, ctx.log)));
}

async function* sseStream(
  kind: CompletionKind,
  meta: CompletionMeta,
  first: IteratorResult<TextEvent>,
  rest: AsyncGenerator<TextEvent>,
  includeUsage: boolean,
  log: FastifyBaseLogger,
): AsyncGenerator<string> {
  try {
    if (kind === 'chat') yield sseData(chatChunk(meta, { role: 'assistant', content: '' }, null, includeUsage));
    for (let r = first; !r.done; r = await rest.next()) {
      const ev = r.value;
      if (ev.kind === 'text') {
        yield sseData(kind === 'chat' ? chatChunk(meta, { content: ev.text }, null, includeUsage) : textChunk(meta, ev.text, null, includeUsage));
        continue;
      }
      yield sseData(kind === 'chat' ? chatChunk(meta, {}, ev.finishReason, includeUsage) : textChunk(meta, '', ev.finishReason, includeUsage));
      if (includeUsage) yield sseData(usageChunk(meta, kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', ev.usage));
    }
    yield SSE_DONE;
  } catch (e) {
    const err = e instanceof ApiError ? e : internalError();
    if (err.statusCode >= 500) log.warn({ err: err.message, code: err.code, completion: meta.id }, 'stream failed after it started');
    if (!(e instanceof ApiError)) log.error({ err: e, completion: meta.id }, 'internal error in a stream');
    yield sseData(err.toBody());
  } finally {
    await rest.return(undefined);
  }
}
