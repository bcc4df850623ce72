/**
 * One status line: redrawn in place on a terminal, a plain line every few seconds otherwise (CI
 * logs, pipes), so that a long run is never silent and never floods a log.
 */
export class ProgressLine {
  private readonly tty: boolean;
  private lastPlain = 0;
  private shown = '';

  constructor(
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly plainEveryMs = 5_000,
  ) {
    this.tty = stream.isTTY === true;
  }

  get isTty(): boolean {
    return this.tty;
  }

  /** Called often (every 250 ms); draws on a TTY, prints every `plainEveryMs` otherwise. */
  update(text: string, force = false): void {
    if (this.tty) {
      // A pseudo-terminal may report 0 columns: then do not cut at all.
      const columns = this.stream.columns ?? 0;
      const width = columns > 20 ? columns - 1 : Number.POSITIVE_INFINITY;
      this.shown = text.length > width ? text.slice(0, width) : text;
      this.stream.write(`\r\x1b[2K${this.shown}`);
      return;
    }
    const now = Date.now();
    if (force || now - this.lastPlain >= this.plainEveryMs) {
      this.lastPlain = now;
      this.stream.write(`${text}\n`);
    }
  }

  /** A line of its own, above the status line. */
  log(text: string): void {
    if (this.tty && this.shown) this.stream.write('\r\x1b[2K');
    this.stream.write(`${text}\n`);
    if (this.tty && this.shown) this.stream.write(this.shown);
  }

  /** Leaves the last status on screen and moves to a new line. */
  done(text?: string): void {
    if (text !== undefined) this.update(text, true);
    if (this.tty && this.shown) this.stream.write('\n');
    this.shown = '';
  }
}

export function bar(fraction: number, width = 24): string {
  const clamped = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
  const full = Math.round(clamped * width);
  return `[${'#'.repeat(full)}${'-'.repeat(width - full)}]`;
}

export function duration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}
