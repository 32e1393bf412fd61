// Every error the gateway answers with has the OpenAI shape {error:{message,type,param,code}},
// whatever produced it (validation, auth, a worker failing, a bug). ApiError carries that shape
// from where the error is known to the one error handler that writes it (plugins/errors.ts).

/** The body of every error response. `param` names the request field at fault, when one is. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  override readonly name = 'ApiError';

  constructor(
    readonly statusCode: number,
    message: string,
    readonly type: string,
    readonly param: string | null,
    readonly code: string | null,
    /** Extra response headers (Retry-After of a 429). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }

  toBody(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export function badRequest(message: string, param: string | null, code: string | null = null): ApiError {
  return new ApiError(400, message, 'invalid_request_error', param, code);
}

export function invalidApiKey(): ApiError {
  return new ApiError(401, 'Incorrect API key provided', 'invalid_request_error', null, 'invalid_api_key');
}

export function modelNotFound(model: string): ApiError {
  return new ApiError(
    404,
    `The model '${model}' does not exist`,
    'invalid_request_error',
    'model',
    'model_not_found',
  );
}

export function notFound(message: string, code: string): ApiError {
  return new ApiError(404, message, 'invalid_request_error', null, code);
}

export function conflict(message: string, param: string | null): ApiError {
  return new ApiError(409, message, 'invalid_request_error', param, 'already_exists');
}

/** No worker can take the request now (none registered, none with room, all draining). */
export function serviceUnavailable(message: string, code = 'no_worker_available'): ApiError {
  return new ApiError(503, message, 'server_error', null, code);
}

/** A worker failed while handling the request (died, errored, broke the protocol). */
export function workerFailed(message: string): ApiError {
  return new ApiError(502, message, 'server_error', null, 'worker_failed');
}

/** The model's request queue is full: retry after `retryAfterS` whole seconds. */
export function queueFull(message: string, retryAfterS: number): ApiError {
  const seconds = Math.max(1, Math.ceil(retryAfterS));
  return new ApiError(429, message, 'rate_limit_error', null, 'queue_full', { 'retry-after': String(seconds) });
}

export function gatewayTimeout(message: string): ApiError {
  return new ApiError(504, message, 'server_error', null, 'timeout');
}

/** The client went away; nothing is written back, the status only shows in logs and metrics. */
export function clientClosed(): ApiError {
  return new ApiError(499, 'client closed the request', 'invalid_request_error', null, 'client_closed');
}

export function internalError(): ApiError {
  return new ApiError(500, 'The server had an error while processing your request', 'server_error', null, 'internal_error');
}
