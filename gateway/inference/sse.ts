// Server-sent events as OpenAI streams them: one `data: <json>` line and a blank line per
// event, `data: [DONE]` at the end of a successful stream, an `{"error":{...}}` event (and no
// [DONE]) when it fails after the response has started.

export const SSE_DONE = 'data: [DONE]\n\n';

export function sseData(payload: unknown): string {
  return `data: ${JSON.stringify(payload)}\n\n`;
}

export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  // Proxies such as nginx would otherwise buffer the stream.
  'x-accel-buffering': 'no',
} as const;
