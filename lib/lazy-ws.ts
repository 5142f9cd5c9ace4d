/**
 * The `ws` package, imported the first time something needs it. An agent that nobody reaches over WebSocket and that
 * has no revocation feed never loads it (about 3.5 MB of RSS); the first upgrade or feed connection pays once.
 */
type WsModule = typeof import("ws");

let loading: Promise<WsModule> | null = null;

export function loadWs(): Promise<WsModule> {
  loading ??= import("ws").catch((e: unknown) => {
    // A failed import is not cached: the next caller tries again instead of inheriting the failure for good.
    loading = null;
    throw e;
  });
  return loading;
}
