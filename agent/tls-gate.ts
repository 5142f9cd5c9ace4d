import { constants as cryptoConstants, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { TLSSocket, SecureContextOptions } from "node:tls";
import { InvalidArgumentError } from "../lib/errors.ts";
import { splitPemCertificates } from "../lib/x509.ts";
import type { Logger } from "../lib/log.ts";
import type { Identity } from "../identity/store.ts";
import { checkPeerSvid, describeTlsAuthError, type SvidAccepted } from "./svid.ts";
import type { RevocationList } from "./revocation.ts";

/** Revocation status cannot be known: every certificate is refused, with this reason in the log. */
export interface RevocationUnavailable {
  refuse: "revocation_unavailable" | "revocation_stale";
  detail: string;
}

/** What the gate learned about an accepted peer; attached to the connection and every session opened on it. */
export interface PeerIdentity {
  id: string;
  serial: string;
  issuer: string;
  notBefore: number;
  notAfter: number;
}

export interface TlsGateOptions {
  trustDomains: readonly string[];
  /**
   * The current revocation list, null when none is configured, or a refusal when revocation status is unknown and the
   * agent fails closed (no CRL yet, or the last one is past its nextUpdate).
   */
  revocation: () => RevocationList | null | RevocationUnavailable;
  /** Connection-level authorization: could any allow rule ever apply to this identity? */
  admits: (id: string) => boolean;
  logger: Logger;
  /** Sees every refusal (metrics, alerts). */
  onRefuse?: (reason: string, remote: string, identity?: string) => void;
}

/** Certificates whose accepted SVID check is remembered (oldest forgotten first). */
const SVID_CACHE_SIZE = 4096;

/** TLS 1.2, when an operator opts in, is limited to ECDHE key exchange with AEAD ciphers. */
const TLS12_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");
const TLS13_CIPHERS = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/** The trust bundle: the identity's roots plus any extra bundle files (other trust domains' roots). */
export function loadTrustBundle(identity: Identity, extraFiles: readonly string[]): string[] {
  const roots = splitPemCertificates(identity.rootsPem);
  if (roots.length === 0) throw new InvalidArgumentError("identity", "the identity's ca.pem holds no PEM certificate");
  roots.forEach((pem, i) => checkCertificate(pem, "identity", `certificate ${i + 1} of the identity's ca.pem`));
  for (const f of extraFiles) {
    let pem: string;
    try {
      pem = readFileSync(f, "utf8");
    } catch (e) {
      throw new InvalidArgumentError("trustBundles", `cannot read ${f}: ${(e as Error).message}`);
    }
    const certs = splitPemCertificates(pem);
    if (certs.length === 0) throw new InvalidArgumentError("trustBundles", `${f} holds no PEM certificate`);
    certs.forEach((pem, i) => checkCertificate(pem, "trustBundles", `certificate ${i + 1} of ${f}`));
    roots.push(...certs);
  }
  return roots;
}

function checkCertificate(pem: string, field: string, what: string): void {
  try {
    new X509Certificate(pem);
  } catch (e) {
    throw new InvalidArgumentError(field, `${what} is not a valid certificate: ${(e as Error).message}`);
  }
}

/**
 * Server TLS options. Session tickets are off and no session cache is installed, so every connection performs a
 * full handshake and passes the gate: a revoked or expired client cannot come back on a resumed session.
 */
export function serverTlsOptions(identity: Identity, bundle: string[], minVersion: "TLSv1.2" | "TLSv1.3"): SecureContextOptions & { requestCert: true; rejectUnauthorized: false; honorCipherOrder: true } {
  return {
    key: identity.keyPem,
    cert: identity.certPem,
    ca: bundle,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion,
    maxVersion: "TLSv1.3",
    ciphers: `${TLS13_CIPHERS}:${TLS12_CIPHERS}`,
    honorCipherOrder: true,
    ecdhCurve: "X25519:P-256:P-384",
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET | cryptoConstants.SSL_OP_NO_RENEGOTIATION | cryptoConstants.SSL_OP_NO_COMPRESSION,
  };
}

/**
 * The TLS gate. Node is run with rejectUnauthorized off so that the gate sees, and logs, why a peer fails; it then
 * decides every connection itself: chain (Node's verdict), SVID rules, revocation, and whether any rule admits the
 * identity at all. One generic refusal to the peer (the connection closes), the precise reason in the log.
 */
export class TlsGate {
  #o: TlsGateOptions;
  /**
   * Accepted SVID checks by certificate DER. A client's certificate is parsed (ASN.1, in JavaScript) once, not on
   * every connection: what the check decides depends only on the DER and the trust domains (the cache is dropped
   * when they change) except the validity window, which is checked again on every hit against `now`. Refusals are
   * never cached; revocation and `admits` are asked on every connection.
   */
  #accepted = new Map<string, { der: Buffer; svid: SvidAccepted }>();

  /**
   * One frozen identity per accepted certificate check, shared by every connection of that certificate: the agent
   * keeps it per socket for the connection's life. Decided afresh (revocation, admits) on every connection all the same.
   */
  #peers = new WeakMap<SvidAccepted, Readonly<PeerIdentity>>();

  constructor(opts: TlsGateOptions) {
    this.#o = opts;
  }

  update(opts: Partial<TlsGateOptions>): void {
    this.#o = { ...this.#o, ...opts };
    this.#accepted.clear();
  }

  #svid(der: Buffer, fingerprint: string, now: number): ReturnType<typeof checkPeerSvid> {
    const hit = this.#accepted.get(fingerprint);
    if (hit && hit.der.equals(der) && now >= hit.svid.notBefore && now <= hit.svid.notAfter) return hit.svid;
    const svid = checkPeerSvid(der, { trustDomains: this.#o.trustDomains, purpose: "client", now });
    if (svid.ok) {
      if (this.#accepted.size >= SVID_CACHE_SIZE) this.#accepted.delete(this.#accepted.keys().next().value!);
      this.#accepted.set(fingerprint, { der, svid });
    }
    return svid;
  }

  /** Returns the peer's identity, or null after logging why the connection must be closed. */
  check(socket: TLSSocket, now = Date.now()): PeerIdentity | null {
    const refuse = (reason: string, detail: string, id?: string): null => {
      const remote = `${socket.remoteAddress}:${socket.remotePort}`;
      this.#o.logger.warn({ event: "handshake_refused", remote, reason, detail, identity: id }, "client refused at the TLS gate");
      this.#o.onRefuse?.(reason, remote, id);
      return null;
    };
    if (socket.isSessionReused()) return refuse("session_resumed", "TLS session resumption is not accepted");
    // The leaf's DER and SHA-256 fingerprint, from OpenSSL. getPeerCertificate(false) rather than
    // getPeerX509Certificate(): called in secureConnection, the X509Certificate costs 2–3× as much CPU per handshake
    // (Node 20.20, 300 real mTLS handshakes each: ~240–420 µs against ~95–150 µs per call). It may leave a little more
    // resident per idle connection (~2.5 KB was measured once); handshake CPU is the scarcer resource.
    const cert = socket.getPeerCertificate(false) as { raw?: Buffer; fingerprint256?: string } | null;
    if (!cert?.raw || !cert.fingerprint256) return refuse("no_client_certificate", "the client presented no certificate");
    if (!socket.authorized) return refuse(describeTlsAuthError(socket.authorizationError), String(socket.authorizationError));
    const svid = this.#svid(cert.raw, cert.fingerprint256, now);
    if (!svid.ok) return refuse(svid.reason, svid.detail);
    const revocation = this.#o.revocation();
    if (revocation && "refuse" in revocation) return refuse(revocation.refuse, revocation.detail, svid.id);
    if (revocation && revocation.isRevoked(svid.serial, svid.issuer)) return refuse("revoked", `certificate ${svid.serial} is revoked`, svid.id);
    if (!this.#o.admits(svid.id)) return refuse("not_admitted", "no allow rule admits this identity", svid.id);
    let peer = this.#peers.get(svid);
    if (!peer) this.#peers.set(svid, (peer = Object.freeze({ id: svid.id, serial: svid.serial, issuer: svid.issuer, notBefore: svid.notBefore, notAfter: svid.notAfter })));
    return peer;
  }
}
