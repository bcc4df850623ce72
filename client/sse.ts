/** One Server-Sent Event, as the text/event-stream format defines it. */
export interface ServerSentEvent {
  /** The `event:` field; `message` when the server gave none. */
  event: string;
  /** The `data:` lines, joined with newlines. */
  data: string;
  /** The last `id:` seen on the stream, or null. */
  id: string | null;
}

const LINE_END = /\r\n|\r|\n/;

/**
 * Parses a text/event-stream body into events, as a browser's EventSource would: any line ending,
 * comments, multi-line data, and a final event without its blank line dropped. Stops when the stream
 * ends; breaking out of the loop cancels the stream.
 */
export async function* readServerSentEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<ServerSentEvent, void, undefined> {
  // TextDecoder rather than TextDecoderStream: the same code type-checks against the DOM library
  // and against Node's types, and a character split across chunks is still decoded whole.
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data: string[] = [];
  let id: string | null = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const match = LINE_END.exec(buffer);
        if (!match) break;
        // A CR at the very end may be the first half of a CRLF split across chunks: wait for more.
        if (match[0] === '\r' && match.index === buffer.length - 1) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === '') {
          if (data.length > 0) yield { event: event || 'message', data: data.join('\n'), id };
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? '' : line.slice(colon + 1);
        if (fieldValue.startsWith(' ')) fieldValue = fieldValue.slice(1);
        if (field === 'event') event = fieldValue;
        else if (field === 'data') data.push(fieldValue);
        else if (field === 'id' && !fieldValue.includes('\0')) id = fieldValue;
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}
