// OpenAI `stop` sequences are text, but tokens do not align with text: a stop string may span
// several tokens. The matcher sees the completion as a stream of text pieces, releases only
// text that can no longer be the start of a stop sequence, and never releases the stop itself.

export interface StopStep {
  /** Text now safe to send to the client. */
  text: string;
  /** A stop sequence was found; nothing after it may be sent. */
  stopped: boolean;
}

export class StopMatcher {
  private held = '';
  private done = false;

  /** `stops` must be non-empty strings; an empty list passes everything through. */
  constructor(private readonly stops: readonly string[]) {}

  push(piece: string): StopStep {
    if (this.done) return { text: '', stopped: true };
    const buffer = this.held + piece;
    let cut = -1;
    for (const s of this.stops) {
      const at = buffer.indexOf(s);
      if (at !== -1 && (cut === -1 || at < cut)) cut = at;
    }
    if (cut !== -1) {
      this.done = true;
      this.held = '';
      return { text: buffer.slice(0, cut), stopped: true };
    }
    const keep = this.partialMatchLength(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** Generation ended without a stop: what was held back is ordinary text after all. */
  flush(): string {
    const rest = this.done ? '' : this.held;
    this.held = '';
    return rest;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop sequence. */
  private partialMatchLength(buffer: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, buffer.length); n > best; n--) {
        if (buffer.endsWith(s.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
