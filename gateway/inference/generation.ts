// From the worker's token events to the completion's text: incremental detokenization, then
// stop sequences. A stop sequence ends the completion early; leaving the token iteration then
// cancels the worker's call, so it stops generating.
import { workerFailed } from '../errors.js';
import type { GenerationEvent } from '../scheduler/loop.js';
import { IncrementalDetokenizer, type TokenDecoder } from './detokenizer.js';
import { usage, type FinishReason, type Usage } from './openai-format.js';
import { StopMatcher } from './stop-matcher.js';

export type TextEvent = { kind: 'text'; text: string } | { kind: 'done'; finishReason: FinishReason; usage: Usage };

export async function* completionText(
  tokens: AsyncIterable<GenerationEvent>,
  decoder: TokenDecoder,
  plan: { promptTokenIds: number[]; stop: string[] },
): AsyncGenerator<TextEvent> {
  const detokenizer = new IncrementalDetokenizer(decoder, plan.promptTokenIds);
  const stops = new StopMatcher(plan.stop);
  const promptTokens = plan.promptTokenIds.length;
  let completionTokens = 0;
  for await (const ev of tokens) {
    if (ev.kind === 'token') {
      completionTokens += 1;
      const step = stops.push(detokenizer.push(ev.id));
      if (step.text !== '') yield { kind: 'text', text: step.text };
      if (step.stopped) {
        yield { kind: 'done', finishReason: 'stop', usage: usage(promptTokens, completionTokens) };
        return;
      }
    } else {
      const step = stops.push(detokenizer.flush());
      const rest = step.text + stops.flush();
      if (rest !== '') yield { kind: 'text', text: rest };
      const counted = Math.max(completionTokens, ev.completionTokens);
      yield { kind: 'done', finishReason: step.stopped ? 'stop' : ev.reason, usage: usage(promptTokens, counted) };
      return;
    }
  }
  throw workerFailed('the token stream ended without a finish event');
}
