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
  // Listeners rather than `for await`: an async iterator per response costs more than the one event it usually carries.
  await new Promise<void>((resolve, reject) => {
    const fail = (e: unknown) => {
      cleanup();
      reject(e);
    };
    const end = () => {
      cleanup();
      resolve();
    };
    const data = (chunk: Buffer | string) => {
      try {
        parser.feed(typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true }));
      } catch (e) {
        src.destroy();
        fail(e);
      }
    };
    // A stream destroyed before it ended (client gone, session closed) ends the relay like `for await` did.
    const close = () => (src.readableEnded ? end() : fail(Object.assign(new Error("Premature close"), { code: "ERR_STREAM_PREMATURE_CLOSE" })));
    const cleanup = () => {
      src.off("data", data);
      src.off("end", end);
      src.off("error", fail);
      src.off("close", close);
    };
    if (src.destroyed) return close();
    src.on("data", data);
    src.once("end", end);
    src.once("error", fail);
    src.once("close", close);
  });
}
