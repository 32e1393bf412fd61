// The simulator's event queue: a binary min-heap on (time, sequence), so events at one instant
// run in the order they were scheduled and a replay is deterministic. O(log n) push and pop;
// time and sequence live in parallel arrays beside the payloads to keep comparisons cheap.

export class EventHeap<T> {
  private times: number[] = [];
  private seqs: number[] = [];
  private items: T[] = [];
  private nextSeq = 0;

  get size(): number {
    return this.items.length;
  }

  /** Time of the earliest event; Infinity when empty. */
  peekTime(): number {
    return this.times[0] ?? Infinity;
  }

  push(time: number, item: T): void {
    if (Number.isNaN(time)) throw new RangeError('event time is NaN');
    let i = this.items.length;
    const seq = this.nextSeq++;
    this.times.push(time);
    this.seqs.push(seq);
    this.items.push(item);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(time, seq, parent)) break;
      this.move(parent, i);
      i = parent;
    }
    this.place(i, time, seq, item);
  }

  /** The earliest event and its time; null when empty. */
  pop(): { time: number; item: T } | null {
    const n = this.items.length;
    if (n === 0) return null;
    const top = { time: this.times[0] as number, item: this.items[0] as T };
    const time = this.times.pop() as number;
    const seq = this.seqs.pop() as number;
    const item = this.items.pop() as T;
    if (n > 1) {
      let i = 0;
      const last = n - 1;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= last) break;
        const r = l + 1;
        const child = r < last && this.less(r, l) ? r : l;
        if (!this.lessThan(child, time, seq)) break;
        this.move(child, i);
        i = child;
      }
      this.place(i, time, seq, item);
    }
    return top;
  }

  private before(time: number, seq: number, j: number): boolean {
    const tj = this.times[j] as number;
    return time < tj || (time === tj && seq < (this.seqs[j] as number));
  }

  private lessThan(j: number, time: number, seq: number): boolean {
    const tj = this.times[j] as number;
    return tj < time || (tj === time && (this.seqs[j] as number) < seq);
  }

  private less(a: number, b: number): boolean {
    return this.lessThan(a, this.times[b] as number, this.seqs[b] as number);
  }

  private move(from: number, to: number): void {
    this.times[to] = this.times[from] as number;
    this.seqs[to] = this.seqs[from] as number;
    this.items[to] = this.items[from] as T;
  }

  private place(i: number, time: number, seq: number, item: T): void {
    this.times[i] = time;
    this.seqs[i] = seq;
    this.items[i] = item;
  }
}
