/**
 * Just enough DER for the CA's hot path: writing the fixed leaf profile and reading a PKCS#10 request strictly.
 * @peculiar/x509 builds the same structures through an ASN.1 object model at ~8 ms per certificate; these byte-level
 * helpers make issuance cost what its signature costs. Anything outside the CA's own fixed profile still goes through
 * the library (CA certificates, CRLs), and test/ca/der-template.test.ts pins the output to the library's.
 */

/** How many bytes follow the 0x80|n octet of a long-form DER length (0 for the short form, below 128). */
function longLengthOctets(n: number): number {
  if (n < 0x80) return 0;
  let k = 0;
  for (let v = n; v > 0; v = Math.floor(v / 256)) k++;
  return k;
}

/**
 * One TLV with the given tag byte around the concatenated contents, written into one buffer (no intermediate concat):
 * issuance builds ~30 of these per certificate. Length: short form below 128, else 0x80|n and n big-endian bytes.
 */
export function tlv(tag: number, ...contents: Buffer[]): Buffer {
  let len = 0;
  for (const c of contents) len += c.length;
  const k = longLengthOctets(len);
  const out = Buffer.allocUnsafe(2 + k + len);
  out[0] = tag;
  let off = 1;
  if (k === 0) out[off++] = len;
  else {
    out[off++] = 0x80 | k;
    for (let i = k - 1; i >= 0; i--) out[off++] = Math.floor(len / 256 ** i) & 0xff;
  }
  for (const c of contents) off += c.copy(out, off);
  return out;
}

export const seq = (...c: Buffer[]): Buffer => tlv(0x30, ...c);
export const octets = (b: Buffer): Buffer => tlv(0x04, b);
export const bitString = (b: Buffer): Buffer => tlv(0x03, Buffer.from([0]), b);

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const bytes: number[] = [arcs[0] * 40 + arcs[1]];
  for (const arc of arcs.slice(2)) {
    const groups: number[] = [];
    let v = arc;
    do {
      groups.unshift(v & 0x7f);
      v = Math.floor(v / 128);
    } while (v > 0);
    for (let i = 0; i < groups.length - 1; i++) groups[i] |= 0x80;
    bytes.push(...groups);
  }
  return tlv(0x06, Buffer.from(bytes));
}

const p = (n: number, w = 2): string => String(n).padStart(w, "0");

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Zulu. */
export function time(ms: number): Buffer {
  const d = new Date(ms);
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  const y = d.getUTCFullYear();
  return y < 2050 ? tlv(0x17, Buffer.from(`${p(y % 100)}${rest}`, "latin1")) : tlv(0x18, Buffer.from(`${p(y, 4)}${rest}`, "latin1"));
}

export class DerError extends Error {}

/** A TLV read from a buffer: `raw` is the whole encoding, `value` the contents. */
export interface Node {
  tag: number;
  raw: Buffer;
  value: Buffer;
}

/** Reads one TLV at `offset`, refusing indefinite, non-minimal and overlong lengths (DER, not BER). */
export function read(buf: Buffer, offset = 0): Node {
  if (offset + 2 > buf.length) throw new DerError("truncated");
  const tag = buf[offset];
  if ((tag & 0x1f) === 0x1f) throw new DerError("multi-byte tags are not used here");
  let len = buf[offset + 1];
  let head = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3) throw new DerError("indefinite or oversized length");
    if (offset + 2 + n > buf.length) throw new DerError("truncated");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i];
    if (len < 0x80 || buf[offset + 2] === 0) throw new DerError("non-minimal length");
    head += n;
  }
  const end = offset + head + len;
  if (end > buf.length) throw new DerError("truncated");
  return { tag, raw: buf.subarray(offset, end), value: buf.subarray(offset + head, end) };
}

/** The children of a constructed value, which must fill it exactly. */
export function children(node: Node): Node[] {
  const out: Node[] = [];
  for (let off = 0; off < node.value.length; ) {
    const child = read(node.value, off);
    out.push(child);
    off += child.raw.length;
  }
  return out;
}

/** Reads exactly one TLV of the expected tag that spans the whole buffer. */
export function readWhole(buf: Buffer, tag: number): Node {
  const n = read(buf, 0);
  if (n.tag !== tag || n.raw.length !== buf.length) throw new DerError("unexpected tag or trailing data");
  return n;
}

/** Dotted form of an OBJECT IDENTIFIER's contents. */
export function oidString(value: Buffer): string {
  if (value.length === 0) throw new DerError("empty OID");
  const arcs: number[] = [];
  let v = 0;
  for (let i = 0; i < value.length; i++) {
    if (v === 0 && value[i] === 0x80) throw new DerError("non-minimal OID arc");
    v = v * 128 + (value[i] & 0x7f);
    if (!(value[i] & 0x80)) {
      arcs.push(v);
      v = 0;
    } else if (i === value.length - 1) throw new DerError("truncated OID");
  }
  const first = arcs.shift()!;
  const top = first < 40 ? 0 : first < 80 ? 1 : 2;
  return [top, first - top * 40, ...arcs].join(".");
}
