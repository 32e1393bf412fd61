// Bytes a load can take from host copies this worker already holds instead of fetching them.
// Two instances of the same registered files hold byte-identical tensors: a pipeline member
// consolidating the whole model already has its own stage in host memory, and a member that
// kept its stage's host copy after its pipeline dissolved has those layers for any later load
// of the model. Files are the same when their paths, sizes and whole-file sha256 digests are
// (registration records them). Only instances whose files all came with chunk hashes have a
// key, so a donor's bytes were verified when it loaded and copying them keeps the rule that an
// instance serves only verified bytes; a load of unverified files neither gives nor takes. Only settled copies donate (not a load still filling its buffer, not an
// instance being unloaded).
import type { ModelFile__Output } from '../../protos/generated/paraserve/v1/ModelFile.js';
import type { HostBufferHandle } from '../native/addon-types.js';
import type { HostTensor, InstanceRecord, WorkerState } from './state.js';

/**
 * What identifies the verified bytes of a model's files; null unless every file has its
 * digest and chunk hashes recorded.
 */
export function contentKeyOf(files: readonly Pick<ModelFile__Output, 'path' | 'size' | 'sha256' | 'chunkBytes'>[]): string | null {
  if (files.length === 0 || files.some((f) => f.sha256 === '' || f.chunkBytes === 0)) return null;
  return JSON.stringify([...files].sort((a, b) => a.path.localeCompare(b.path)).map((f) => [f.path, f.size, f.sha256]));
}

/** One tensor's bytes in another instance's host copy. */
export interface LocalCopy {
  name: string;
  from: HostBufferHandle;
  fromOffset: number;
  bytes: number;
}

/**
 * For each tensor of `wanted` that another settled instance of the same content holds in its
 * host copy (same name, same byte count), where to copy it from; the most recently used
 * donor first.
 */
export function localCopies(state: WorkerState, loading: InstanceRecord, wanted: readonly Pick<HostTensor, 'name' | 'bytes'>[]): LocalCopy[] {
  if (loading.contentKey === null) return [];
  const donors = state
    .allInstances()
    .filter((i) => i !== loading && i.contentKey === loading.contentKey && i.hostBuffer !== null && i.residency !== 'LOADING' && !i.unloading)
    .sort((a, b) => b.lastUsedMs - a.lastUsedMs);
  const copies: LocalCopy[] = [];
  for (const tensor of wanted) {
    for (const donor of donors) {
      const held = donor.hostTensors.find((h) => h.name === tensor.name && h.bytes === tensor.bytes);
      if (held === undefined) continue;
      copies.push({ name: tensor.name, from: donor.hostBuffer!, fromOffset: held.offset, bytes: held.bytes });
      break;
    }
  }
  return copies;
}
