// Where a stage's tensors go in its host buffer and which ranged requests fetch them. Pure:
// the loader (loader.ts) runs the plan. Tensors that sit back to back in a file share one
// span of the buffer (checkpoints store a layer's tensors together); within a span the buffer
// mirrors the file byte for byte, so every tensor keeps the alignment it has in the checkpoint;
// spans start on `alignment`. Requests keep the stage plan's layer order so the first layers
// land first, and long runs are split so several requests can be in flight.
//
// For a file registered with chunk hashes, requests cover whole chunks (the union of chunks
// the spans touch, adjacent ones merged, each request at most maxRangeBytes unless one chunk
// is longer), so every chunk can be verified; only the bytes the spans need are copied into
// the buffer (targets), chunk edges are hashed and dropped. A file without chunk hashes is
// fetched span by span, unverified.
//
// Tensors in `have` (bytes the worker copies from another host copy of the same files, see
// local-copies.ts) are laid out like the others but not fetched: the layout never depends on
// which tensors are had, so it can be computed before the donors are chosen.
import type { TensorInfo } from '../models/safetensors.js';

/** File bytes [begin, end) go to the host buffer at bufferOffset. */
export interface FetchTarget {
  begin: number;
  end: number;
  bufferOffset: number;
}

/** One registered chunk of a file: bytes [begin, end) must hash to sha256. */
export interface FetchChunk {
  index: number;
  begin: number;
  end: number;
  sha256: string;
}

/** One ranged request for file bytes [begin, end). */
export interface FetchRange {
  file: string;
  begin: number;
  end: number;
  /** The parts of the range the stage needs, in file order, and where they go. */
  targets: FetchTarget[];
  /** The chunks that make up [begin, end) exactly; empty when the file has no chunk hashes. */
  chunks: FetchChunk[];
}

export interface FetchPlan {
  /** Bytes the host buffer needs. */
  totalBytes: number;
  /** Tensor bytes the stage needs (totalBytes minus alignment padding). */
  tensorBytes: number;
  /** Bytes requested from the source: tensorBytes plus the chunk edges verification needs. */
  fetchBytes: number;
  /** In fetch order (the stage plan's layer order). */
  ranges: FetchRange[];
  /** Buffer offset of each tensor, by name. */
  offsets: Map<string, number>;
  /** Files whose bytes are fetched without verification (no chunk hashes registered). */
  unverifiedFiles: string[];
}

export interface FetchPlanOptions {
  /** Longest single request; longer runs are split (on chunk edges for verified files). */
  maxRangeBytes: number;
  /** Buffer offset alignment of every span of contiguous tensors. */
  alignment: number;
}

/** A file's registered chunk hashes; sha256.length === ceil(size / chunkBytes). */
export interface FileChunkHashes {
  size: number;
  chunkBytes: number;
  sha256: readonly string[];
}

export const defaultFetchPlanOptions: FetchPlanOptions = { maxRangeBytes: 16 * 1024 * 1024, alignment: 64 };

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/** A run of tensors contiguous in one file, in stage-plan order, and its place in the buffer. */
interface Span {
  file: string;
  begin: number;
  end: number;
  bufferOffset: number;
}

/**
 * Lays out `tensors` (a stage plan, in layer order) and cuts the requests that fetch them,
 * all but those named in `have`. `chunks` gives the chunk hashes of the files that have them
 * (others are unverified).
 */
export function planFetch(
  tensors: readonly Pick<TensorInfo, 'name' | 'file' | 'begin' | 'end'>[],
  options: FetchPlanOptions = defaultFetchPlanOptions,
  chunks: ReadonlyMap<string, FileChunkHashes> = new Map(),
  have: ReadonlySet<string> = new Set(),
): FetchPlan {
  const offsets = new Map<string, number>();
  const spans: Span[] = [];
  /** The spans' parts that are fetched: runs of tensors not in `have`. */
  const fetchSpans: Span[] = [];
  let cursor = 0;
  let tensorBytes = 0;
  for (const t of tensors) {
    const last = spans.at(-1);
    if (last !== undefined && last.file === t.file && last.end === t.begin) {
      offsets.set(t.name, last.bufferOffset + (t.begin - last.begin));
      last.end = t.end;
    } else {
      const bufferOffset = alignUp(cursor, options.alignment);
      offsets.set(t.name, bufferOffset);
      spans.push({ file: t.file, begin: t.begin, end: t.end, bufferOffset });
    }
    const span = spans.at(-1)!;
    cursor = span.bufferOffset + (span.end - span.begin);
    tensorBytes += t.end - t.begin;
    if (have.has(t.name)) continue;
    const bufferOffset = offsets.get(t.name)!;
    const lastFetched = fetchSpans.at(-1);
    if (lastFetched !== undefined && lastFetched.file === t.file && lastFetched.end === t.begin && lastFetched.bufferOffset + (t.begin - lastFetched.begin) === bufferOffset) {
      lastFetched.end = t.end;
    } else {
      fetchSpans.push({ file: t.file, begin: t.begin, end: t.end, bufferOffset });
    }
  }

  const ranges: FetchRange[] = [];
  /** For verified files: the range that fetches each chunk, by file then chunk index. */
  const rangeOfChunk = new Map<string, Map<number, FetchRange>>();
  const unverified = new Set<string>();
  for (const span of fetchSpans) {
    const hashes = chunks.get(span.file);
    if (hashes === undefined) {
      unverified.add(span.file);
      for (let begin = span.begin; begin < span.end; begin += options.maxRangeBytes) {
        const end = Math.min(span.end, begin + options.maxRangeBytes);
        ranges.push({ file: span.file, begin, end, targets: [{ begin, end, bufferOffset: span.bufferOffset + (begin - span.begin) }], chunks: [] });
      }
      continue;
    }
    let planned = rangeOfChunk.get(span.file);
    if (planned === undefined) rangeOfChunk.set(span.file, (planned = new Map()));
    const first = Math.floor(span.begin / hashes.chunkBytes);
    const last = Math.floor((span.end - 1) / hashes.chunkBytes);
    for (let index = first; index <= last; index++) {
      const begin = index * hashes.chunkBytes;
      const end = Math.min(begin + hashes.chunkBytes, hashes.size);
      let range = planned.get(index);
      if (range === undefined) {
        const chunk: FetchChunk = { index, begin, end, sha256: hashes.sha256[index] ?? '' };
        const previous = ranges.at(-1);
        if (previous !== undefined && previous.file === span.file && previous.end === begin && previous.chunks.length > 0 && end - previous.begin <= options.maxRangeBytes) {
          previous.end = end;
          previous.chunks.push(chunk);
          range = previous;
        } else {
          range = { file: span.file, begin, end, targets: [], chunks: [chunk] };
          ranges.push(range);
        }
        planned.set(index, range);
      }
      const from = Math.max(begin, span.begin);
      const to = Math.min(end, span.end);
      const bufferOffset = span.bufferOffset + (from - span.begin);
      const previousTarget = range.targets.at(-1);
      if (previousTarget !== undefined && previousTarget.end === from && previousTarget.bufferOffset + (from - previousTarget.begin) === bufferOffset) {
        previousTarget.end = to;
      } else {
        range.targets.push({ begin: from, end: to, bufferOffset });
      }
    }
  }
  for (const range of ranges) range.targets.sort((a, b) => a.begin - b.begin);
  return {
    totalBytes: cursor,
    tensorBytes,
    fetchBytes: ranges.reduce((sum, r) => sum + (r.end - r.begin), 0),
    ranges,
    offsets,
    unverifiedFiles: [...unverified],
  };
}

/** Pure: the parts of `range` for file bytes [begin, end) (a chunk), for refetching it alone. */
export function subRange(range: FetchRange, chunk: FetchChunk): FetchRange {
  return {
    file: range.file,
    begin: chunk.begin,
    end: chunk.end,
    targets: range.targets.flatMap((t) => {
      const from = Math.max(t.begin, chunk.begin);
      const to = Math.min(t.end, chunk.end);
      return from < to ? [{ begin: from, end: to, bufferOffset: t.bufferOffset + (from - t.begin) }] : [];
    }),
    chunks: [chunk],
  };
}
