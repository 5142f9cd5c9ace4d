export { freePort } from "../../lib/net.ts";
