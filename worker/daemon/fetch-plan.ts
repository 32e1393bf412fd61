// Where a stage's tensors go in its host buffer and which ranged requests fetch them. Pure:
// the loader (loader.ts) runs the plan. Tensors that sit back to back in a file are fetched
// by one request (checkpoints store a layer's tensors together), large spans are split so
// several requests can be in flight, and ranges keep the stage plan's layer order so the
// first layers land first. Within a range the buffer mirrors the file byte for byte, so
// every tensor keeps the alignment it has in the checkpoint; ranges start on `alignment`.
import type { TensorInfo } from '../models/safetensors.js';

/** One ranged request: file bytes [begin, end) land at bufferOffset in the host buffer. */
export interface FetchRange {
  file: string;
  begin: number;
  end: number;
  bufferOffset: number;
}

export interface FetchPlan {
  /** Bytes the host buffer needs. */
  totalBytes: number;
  /** Tensor bytes fetched (totalBytes minus alignment padding). */
  fetchBytes: number;
  /** In fetch order (the stage plan's layer order). */
  ranges: FetchRange[];
  /** Buffer offset of each tensor, by name. */
  offsets: Map<string, number>;
}

export interface FetchPlanOptions {
  /** Longest single request; longer spans are split. */
  maxRangeBytes: number;
  /** Buffer offset alignment of every span of contiguous tensors. */
  alignment: number;
}

export const defaultFetchPlanOptions: FetchPlanOptions = { maxRangeBytes: 16 * 1024 * 1024, alignment: 64 };

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/** A run of tensors contiguous in one file, in stage-plan order. */
interface Span {
  file: string;
  begin: number;
  end: number;
  tensors: Pick<TensorInfo, 'name' | 'begin'>[];
}

/** Lays out `tensors` (a stage plan, in layer order) and cuts the requests that fetch them. */
export function planFetch(
  tensors: readonly Pick<TensorInfo, 'name' | 'file' | 'begin' | 'end'>[],
  options: FetchPlanOptions = defaultFetchPlanOptions,
): FetchPlan {
  const spans: Span[] = [];
  for (const t of tensors) {
    const last = spans.at(-1);
    if (last !== undefined && last.file === t.file && last.end === t.begin) {
      last.end = t.end;
      last.tensors.push(t);
    } else {
      spans.push({ file: t.file, begin: t.begin, end: t.end, tensors: [t] });
    }
  }

  const ranges: FetchRange[] = [];
  const offsets = new Map<string, number>();
  let cursor = 0;
  let fetchBytes = 0;
  for (const span of spans) {
    const base = alignUp(cursor, options.alignment);
    for (const t of span.tensors) offsets.set(t.name, base + (t.begin - span.begin));
    for (let begin = span.begin; begin < span.end; begin += options.maxRangeBytes) {
      const end = Math.min(span.end, begin + options.maxRangeBytes);
      ranges.push({ file: span.file, begin, end, bufferOffset: base + (begin - span.begin) });
    }
    fetchBytes += span.end - span.begin;
    cursor = base + (span.end - span.begin);
  }
  return { totalBytes: cursor, fetchBytes, ranges, offsets };
}
