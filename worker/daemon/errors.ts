// How failures inside the worker become gRPC statuses. Every handler funnels what it catches
// through toStatus, so one table decides which code the gateway sees for a missing file, an
// unreachable store, an out-of-memory device or a bad request, and the details string always
// says what went wrong. Errors are matched by `name` (every error of the models layer, the
// native addon and the engine has one), not by identity, so a class loaded twice still maps.
import { status } from '@grpc/grpc-js';

/** A failure the worker already knows the gRPC status of. */
export class WorkerError extends Error {
  override name = 'WorkerError';
  readonly code: status;

  constructor(code: status, message: string, options: ErrorOptions | null = null) {
    super(message, options ?? undefined);
    this.code = code;
  }
}

/** What a handler sends back: a status code with a human-readable details string. */
export interface StatusReport {
  code: status;
  details: string;
}

const codeByErrorName: Record<string, status> = {
  GenerationError: status.INVALID_ARGUMENT,
  // Parameters are validated before generation starts; what the sampler refuses later are
  // the model's logits (NaN, +Infinity), which is not the caller's fault.
  SamplingError: status.INTERNAL,
  InvalidArgumentError: status.INVALID_ARGUMENT,
  OutOfMemoryError: status.RESOURCE_EXHAUSTED,
  NotImplementedError: status.UNIMPLEMENTED,
  DisposedError: status.FAILED_PRECONDITION,
  AbortError: status.CANCELLED,
  CudaError: status.INTERNAL,
  NcclError: status.INTERNAL,
};

const codeByModelFormatCode: Record<string, status> = {
  missing_file: status.NOT_FOUND,
  invalid: status.INVALID_ARGUMENT,
  unsupported: status.INVALID_ARGUMENT,
  unreachable: status.UNAVAILABLE,
};

/** Socket-level failures (from undici or node:net) reaching a model store. */
const unreachableSystemCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

function stringField(value: object, key: string): string | null {
  const field: unknown = (value as Record<string, unknown>)[key];
  return typeof field === 'string' ? field : null;
}

/** The status for anything a handler caught; unknown errors are INTERNAL with their message. */
export function toStatus(error: unknown): StatusReport {
  if (error instanceof WorkerError) return { code: error.code, details: error.message };
  if (!(error instanceof Error)) return { code: status.INTERNAL, details: String(error) };
  const details = error.message || error.name;
  if (error.name === 'ModelFormatError') {
    const code = stringField(error, 'code');
    return { code: (code !== null ? codeByModelFormatCode[code] : undefined) ?? status.INVALID_ARGUMENT, details };
  }
  const byName = codeByErrorName[error.name];
  if (byName !== undefined) return { code: byName, details };
  const systemCode = stringField(error, 'code');
  if (systemCode !== null && unreachableSystemCodes.has(systemCode)) {
    return { code: status.UNAVAILABLE, details: `model source unreachable: ${details}` };
  }
  if (systemCode === 'ENOENT') return { code: status.NOT_FOUND, details };
  return { code: status.INTERNAL, details };
}
