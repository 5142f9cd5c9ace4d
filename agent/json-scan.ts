/**
 * A single pass over a JSON text before JSON.parse sees it. It refuses what JSON.parse would accept but the agent must
 * not: nesting deeper than a bound (a 100 000-level array costs recursion somewhere later: in validators, in the
 * upstream's parser), duplicate keys (JSON.parse keeps the last value, another parser may keep the first, so the
 * agent could authorize one call and the upstream execute another), and `__proto__` keys (prototype pollution in
 * whatever merges the message later). It does not validate the grammar: text it cannot follow is left to JSON.parse,
 * which then reports the parse error. Linear time, no recursion.
 */
export function scanJson(text: string, maxDepth: number): string | null {
  // One entry per open container: the keys seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let j = i + 1;
      let escaped = false;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          j += 2;
          continue;
        }
        if (d === 0x22) break;
        j++;
      }
      if (j >= n) return null; // unterminated string: JSON.parse reports it
      const top = stack.length > 0 ? stack[stack.length - 1] : null;
      if (top && expectKey) {
        let key = text.slice(i + 1, j);
        if (escaped) {
          try {
            key = JSON.parse(text.slice(i, j + 1)) as string;
          } catch {
            return null;
          }
        }
        if (key === "__proto__") return 'the key "__proto__" is not accepted';
        if (top.has(key)) return `duplicate key ${JSON.stringify(key.length > 64 ? `${key.slice(0, 64)}…` : key)}`;
        top.add(key);
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === 0x7b || c === 0x5b) {
      if (stack.length >= maxDepth) return `nesting deeper than ${maxDepth} levels`;
      stack.push(c === 0x7b ? new Set() : null);
      expectKey = c === 0x7b;
    } else if (c === 0x7d || c === 0x5d) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c) {
      expectKey = stack.length > 0 && stack[stack.length - 1] !== null;
    }
    i++;
  }
  return null;
}
