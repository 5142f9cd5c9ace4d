/**
 * The SSE relay decodes upstream bytes without a streaming TextDecoder while chunks end on character boundaries (a
 * decoder per response cost more than the answer). Whatever the chunking, the events must be exactly what one
 * TextDecoder over the whole stream yields: split characters, a leading BOM and invalid bytes included.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { endsOnCharBoundary, relaySse } from "../../agent/edge/sse.ts";

async function events(chunks: Buffer[]): Promise<string[]> {
  const got: string[] = [];
  await relaySse(Readable.from(chunks), () => {}, (ev) => {
    got.push(ev.data);
    return null;
  });
  return got;
}

/** Streams that must decode the same however they are cut: [what it is, bytes]. */
const STREAMS: Array<[string, Buffer]> = [
  ["2-, 3- and 4-byte characters", Buffer.from("data: héllo € 😀\n\ndata: x\n\n")],
  ["a leading BOM (dropped, as TextDecoder does)", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from("data: ü\n\n")])],
  ["an invalid byte 0xFF", Buffer.concat([Buffer.from("data: a"), Buffer.from([0xff]), Buffer.from("b\n\n")])],
  ["a lone continuation byte", Buffer.concat([Buffer.from("data: a"), Buffer.from([0x80]), Buffer.from("b\n\n")])],
  ["a truncated 3-byte sequence", Buffer.concat([Buffer.from("data: a"), Buffer.from([0xe2, 0x82]), Buffer.from("b\n\n")])],
  ["an overlong encoding", Buffer.concat([Buffer.from("data: a"), Buffer.from([0xf0, 0x80, 0x80, 0xaf]), Buffer.from("b\n\n")])],
  ["a surrogate encoded in UTF-8", Buffer.concat([Buffer.from("data: a"), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from("b\n\n")])],
];

for (const [what, bytes] of STREAMS) {
  test(`SSE decoding is independent of chunking: ${what}`, async () => {
    const expected = await events([Buffer.from(new TextDecoder().decode(bytes))]);
    assert.ok(expected.length > 0);
    for (let i = 1; i < bytes.length; i++) {
      for (let j = i; j < bytes.length; j++) {
        const parts = [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)].filter((p) => p.length > 0);
        assert.deepEqual(await events(parts), expected, `cut at ${i} and ${j}`);
      }
    }
  });
}

test("endsOnCharBoundary: true only where no character continues past the end", () => {
  const s = Buffer.from("aé€😀"); // 1 + 2 + 3 + 4 bytes
  const boundaries = [0, 1, 3, 6, 10];
  for (let i = 0; i <= s.length; i++) assert.equal(endsOnCharBoundary(s.subarray(0, i)), boundaries.includes(i), `after ${i} bytes`);
});
