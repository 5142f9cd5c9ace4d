import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Readable } from "node:stream";

/** Serializes one SSE event (multi-line data is split per the SSE spec). */
export function formatSseEvent(ev: { event?: string; id?: string; data: string; retry?: number }): string {
  let out = "";
  if (ev.event) out += `event: ${ev.event}\n`;
  if (ev.id !== undefined) out += `id: ${ev.id}\n`;
  if (ev.retry !== undefined) out += `retry: ${ev.retry}\n`;
  for (const line of ev.data.split(/\r\n|\r|\n/)) out += `data: ${line}\n`;
  return out + "\n";
}

export interface RelayOptions {
  onRetry?: (ms: number) => void;
  /**
   * Backpressure: called after each upstream chunk; a promise means the client is not keeping up, and no further
   * upstream chunk is read until it settles. The upstream then waits on TCP flow control instead of the agent
   * buffering a fast stream for a slow reader.
   */
  drained?: () => Promise<void> | undefined;
}

/**
 * Reads an upstream SSE stream event by event and writes each through `map` (which may drop or rewrite it). The
 * stream is re-serialized event by event, so a filtered event can never be smuggled by splitting it across chunks.
 */
export async function relaySse(src: Readable, write: (chunk: string) => boolean | void, map: (ev: EventSourceMessage) => string | null, opts: RelayOptions = {}): Promise<void> {
  const { onRetry, drained } = opts;
  const parser = createParser({
    onEvent: (ev) => {
      const data = map(ev);
      if (data !== null) write(formatSseEvent({ event: ev.event, id: ev.id, data }));
    },
    onRetry: (ms) => {
      onRetry?.(ms);
      write(`retry: ${ms}\n\n`);
    },
  });
  // A streaming TextDecoder costs more to create than a short answer costs to relay (ICU converter): it is made only
  // once a chunk ends inside a UTF-8 sequence, and then decodes the rest of the stream so no character is split.
  // (A leading BOM also goes to the decoder, which drops it as before.)
  let decoder: TextDecoder | undefined;
  let first = true;
  for await (const chunk of src) {
    if (typeof chunk === "string") parser.feed(chunk);
    else if (decoder === undefined && !(first && startsWithBom(chunk as Buffer)) && endsOnCharBoundary(chunk as Buffer)) parser.feed((chunk as Buffer).toString("utf8"));
    else parser.feed((decoder ??= new TextDecoder()).decode(chunk as Uint8Array, { stream: true }));
    first = false;
    if (drained) {
      const wait = drained();
      if (wait) await wait;
    }
  }
}

function startsWithBom(buf: Uint8Array): boolean {
  return buf.length >= 1 && buf[0] === 0xef && (buf.length < 2 || buf[1] === 0xbb) && (buf.length < 3 || buf[2] === 0xbf);
}

/** Whether `buf` does not end inside a multi-byte UTF-8 sequence (checked on its last four bytes). */
export function endsOnCharBoundary(buf: Uint8Array): boolean {
  const n = buf.length;
  for (let i = n - 1, k = 1; i >= 0 && k <= 4; i--, k++) {
    const b = buf[i];
    if ((b & 0xc0) === 0x80) continue; // continuation byte: look further back for the lead byte
    const need = b < 0x80 ? 1 : (b & 0xe0) === 0xc0 ? 2 : (b & 0xf0) === 0xe0 ? 3 : (b & 0xf8) === 0xf0 ? 4 : 1;
    return k >= need;
  }
  // Only continuation bytes at the end (or nothing): nothing a later chunk could complete into a valid character
  // unless a lead byte sits further back; let the streaming decoder judge.
  return n === 0;
}
