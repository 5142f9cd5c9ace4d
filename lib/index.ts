/**
 * mcpmesh as a library (`import { createMeshFetch } from "mcpmesh"`): what an application needs to reach meshed MCP
 * servers from its own code. TypeScript sources, run with tsx or a TypeScript-aware loader (no build step).
 *
 *   const fetch = createMeshFetch(identityDir, { expect: "spiffe://example.org/agents/weather" });
 *   await client.connect(new StreamableHTTPClientTransport(new URL(agentUrl), { fetch }));
 */
export { createMeshFetch, meshTlsOptions, PeerRejectedError, type MeshFetch, type MeshFetchOptions } from "../identity/fetch.ts";
export { MeshWebSocketTransport, MCP_WS_SUBPROTOCOL } from "../identity/ws-transport.ts";
export { startConnect, resolveConnectOptions, CONNECT_ERRORS, CONNECT_TRANSPORTS, type ConnectOptions, type ConnectResult, type MeshConnection, type ConnectTransportKind } from "../identity/connect.ts";
export { RenewalScheduler, type RotationOptions } from "../identity/rotation.ts";
export { loadIdentity, type Identity } from "../identity/store.ts";
export { MeshError, InvalidArgumentError, StateError, isMeshError } from "./errors.ts";
