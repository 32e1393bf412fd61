// Model work the CLI does on the operator's machine before it talks to the gateway: turning a
// SOURCE argument into a source URI, checking the checkpoint (inspectModel says exactly what
// is wrong with it) and hashing its files with a progress bar (whole-file and 4 MiB chunk
// digests in one pass), so that the gateway records digests without reading the bytes again.
import { stat } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import type { ModelFileRecord } from './admin-client.js';
import { CliError } from './errors.js';
import { startProgress } from './output.js';
import { resolvePath } from './options.js';

const URI_SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//;
const SUPPORTED_SCHEMES = ['file:', 'http:', 'https:', 's3:'];

/** A file://, http(s):// or s3:// URI as given, or a local directory turned into file://. */
export async function toSourceUri(source: string): Promise<string> {
  if (URI_SCHEME.test(source)) {
    const protocol = new URL(source).protocol;
    if (!SUPPORTED_SCHEMES.includes(protocol)) {
      throw new CliError(`unsupported model source ${source} (use a directory, file://, http://, https:// or s3://)`);
    }
    return source.replace(/\/+$/, '');
  }
  const dir = resolvePath(source);
  const info = await stat(dir).catch(() => null);
  if (info === null || !info.isDirectory()) {
    throw new CliError(`model source ${dir} is not a directory`);
  }
  return pathToFileURL(dir).href;
}

/** Inspects the checkpoint at uri and returns the sha256 of each file it consists of, and of its chunks. */
export async function digestModel(uri: string): Promise<ModelFileRecord[]> {
  const { openModelSource } = await import('../../worker/models/source.js');
  const { inspectModel, hashModelFiles } = await import('../../worker/models/inspect.js');
  const source = openModelSource(uri);
  const inspection = await inspectModel(source);
  const progress = startProgress('hashing', 'bytes');
  try {
    return await hashModelFiles(source, inspection.files, (done, total) => progress.update(done, total));
  } finally {
    progress.stop();
  }
}
