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

/**
 * Reads an upstream SSE stream event by event and writes each through `map` (which may drop or rewrite it). The
 * stream is re-serialized event by event, so a filtered event can never be smuggled by splitting it across chunks.
 */
export async function relaySse(src: Readable, write: (chunk: string) => boolean | void, map: (ev: EventSourceMessage) => string | null, onRetry?: (ms: number) => void): Promise<void> {
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
  const decoder = new TextDecoder();
  for await (const chunk of src) parser.feed(typeof chunk === "string" ? chunk : decoder.decode(chunk as Uint8Array, { stream: true }));
}
