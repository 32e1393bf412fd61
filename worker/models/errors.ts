// One error class for everything that can be wrong with a model's files or its source, so the
// gateway can turn any of them into a 400 with the message as is, and the worker into a
// failed load, without knowing which module found the problem.

/**
 * What kind of problem it is: a file that is not there, bytes or JSON that break a rule,
 * something valid but not supported yet, or a source that could not be reached in time.
 */
export type ModelFormatErrorCode = 'missing_file' | 'invalid' | 'unsupported' | 'unreachable';

export class ModelFormatError extends Error {
  override name = 'ModelFormatError';
  /** The file (relative to the model source) the problem is in; null when it is no one file's. */
  readonly file: string | null;
  readonly code: ModelFormatErrorCode;

  constructor(message: string, file: string | null, code: ModelFormatErrorCode = 'invalid', options: ErrorOptions | null = null) {
    super(message, options ?? undefined);
    this.file = file;
    this.code = code;
  }
}
