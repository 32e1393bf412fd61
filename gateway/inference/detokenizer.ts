// Turns the worker's token ids back into text as they stream. Tokens are not characters: a
// byte-level token may carry half of a UTF-8 sequence, and SentencePiece decoders drop the
// leading space of the first token they decode. So each step decodes a short window that starts
// a few tokens back (the last prompt tokens at first) and releases only what the newest tokens
// added past the window's earlier text; while the result ends in U+FFFD (an incomplete UTF-8
// sequence) nothing is released until a later token completes it. Linear in the completion.

/** What the detokenizer needs of a tokenizer (ModelTokenizer of worker/models/tokenizer.ts). */
export interface TokenDecoder {
  decode(ids: number[], skipSpecialTokens: boolean): string;
}

const PROMPT_CONTEXT_TOKENS = 5;
const REPLACEMENT = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly ids: number[];
  /** Start of the decode window. */
  private prefixOffset = 0;
  /** Tokens before this index have been released as text. */
  private readOffset: number;

  constructor(
    private readonly decoder: TokenDecoder,
    promptIds: readonly number[],
  ) {
    this.ids = promptIds.slice(Math.max(0, promptIds.length - PROMPT_CONTEXT_TOKENS));
    this.readOffset = this.ids.length;
  }

  /** Adds one token; returns the text it completes (often '', sometimes several characters). */
  push(id: number): string {
    this.ids.push(id);
    const { prefix, full } = this.window();
    if (full.length <= prefix.length || full.endsWith(REPLACEMENT)) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }

  /** The end of generation: whatever was held back, replacement characters included. */
  flush(): string {
    const { prefix, full } = this.window();
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.length > prefix.length ? full.slice(prefix.length) : '';
  }

  private window(): { prefix: string; full: string } {
    return {
      prefix: this.decoder.decode(this.ids.slice(this.prefixOffset, this.readOffset), true),
      full: this.decoder.decode(this.ids.slice(this.prefixOffset), true),
    };
  }
}
