/** Certificate serial numbers as the mesh stores and compares them: lower-case hex, no separators, no leading zeros. */
export function normalizeSerial(hex: string): string {
  const s = hex.toLowerCase().replace(/[^0-9a-f]/g, "").replace(/^0+/, "");
  return s.length === 0 ? "0" : s;
}
