// Typed errors of the native addon. The C++ side throws (or rejects with) plain Errors whose
// `name` says what went wrong (native/src/core/Errors.h); addon.ts passes every error of
// every export through mapNativeError once, so callers can use instanceof.

export class NativeError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'NativeError';
  }
}

/** A CUDA runtime or cuBLAS call failed; the message names the call and the CUDA error. */
export class CudaError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'CudaError';
  }
}

export class NcclError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'NcclError';
  }
}

/** Host or device memory ran out (allocation, KV cache growth). */
export class OutOfMemoryError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'OutOfMemoryError';
  }
}

/** An argument the interface does not accept: wrong type, shape, dtype, range or state. */
export class InvalidArgumentError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'InvalidArgumentError';
  }
}

/** The binary has the operation but this backend cannot do it yet. */
export class NotImplementedError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'NotImplementedError';
  }
}

/** A handle was used after freeHostBuffer / disposeStage. */
export class DisposedError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'DisposedError';
  }
}

/** chooseBackend('cuda') on a host or binary that cannot run CUDA stages. */
export class BackendUnavailableError extends NativeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BackendUnavailableError';
  }
}

type NativeErrorClass = new (message: string, options?: ErrorOptions) => NativeError;

const CLASSES_BY_NAME = new Map<string, NativeErrorClass>([
  ['NativeError', NativeError],
  ['CudaError', CudaError],
  ['NcclError', NcclError],
  ['OutOfMemoryError', OutOfMemoryError],
  ['InvalidArgumentError', InvalidArgumentError],
  ['NotImplementedError', NotImplementedError],
  ['DisposedError', DisposedError],
]);

/**
 * The typed error for something the addon threw: an Error named after one of the classes
 * above becomes an instance of it (the original kept as `cause`); other Errors (RangeError
 * from writeHostBuffer, TypeErrors) pass through; non-Errors become NativeError.
 */
export function mapNativeError(e: unknown): Error {
  if (e instanceof NativeError) return e;
  if (e instanceof Error) {
    const errorClass = CLASSES_BY_NAME.get(e.name);
    return errorClass === undefined ? e : new errorClass(e.message, { cause: e });
  }
  return new NativeError(`native addon threw a non-Error value: ${String(e)}`);
}
