/**
 * Certificates, CRLs and CSRs read and written with the ASN.1 layer of @peculiar/x509 (@peculiar/asn1-schema,
 * asn1-x509, asn1-csr, asn1-rsa), without @peculiar/x509 itself: that one needs reflect-metadata and tsyringe and costs
 * the agent about 12 MB of RSS it would carry for its whole life. Signatures are made and checked with node:crypto.
 *
 * Where the agent used to ask @peculiar/x509 for a value (an issuer DN, a SAN list, a CRL's signature algorithm), the
 * functions here compute it the same way, so names compare and messages read exactly as before: a CRL issuer still
 * matches an SVID's issuer string, and an extension that @peculiar/x509 would have failed to parse still fails.
 */
import { sign as cryptoSign, type KeyObject } from "node:crypto";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as asn from "@peculiar/asn1-x509";
import { RsaSaPssParams } from "@peculiar/asn1-rsa";
import { Attributes, CertificationRequest, CertificationRequestInfo } from "@peculiar/asn1-csr";

export { asn, AsnConvert };
export const KeyUsageFlags = asn.KeyUsageFlags;

export function parseCertificate(der: Uint8Array): asn.Certificate {
  return AsnConvert.parse(der, asn.Certificate);
}

export function parseCertificateList(der: Uint8Array): asn.CertificateList {
  return AsnConvert.parse(der, asn.CertificateList);
}

function hex(data: ArrayBuffer | Uint8Array): string {
  return Buffer.from(data instanceof Uint8Array ? data : new Uint8Array(data)).toString("hex");
}

/** A certificate or CRL entry serial as hex (normalizeSerial makes it comparable). */
export function serialHex(raw: ArrayBuffer): string {
  return hex(raw);
}

export function validityTime(t: asn.Time, field: string): Date {
  const d = t.utcTime || t.generalTime;
  if (!d) throw new Error(`Cannot get '${field}' value`);
  return d;
}

// The short names and escaping of @peculiar/x509's Name.toString(): DNs are compared as these strings (an SVID's
// issuer against a CRL's issuer) and appear in messages and audit records.
const DN_NAMES: Record<string, string> = {
  "2.5.4.3": "CN",
  "2.5.4.7": "L",
  "2.5.4.8": "ST",
  "2.5.4.10": "O",
  "2.5.4.11": "OU",
  "2.5.4.6": "C",
  "0.9.2342.19200300.100.1.25": "DC",
  "1.2.840.113549.1.9.1": "E",
  "2.5.4.42": "G",
  "2.5.4.43": "I",
  "2.5.4.4": "SN",
  "2.5.4.12": "T",
};

function escapeDnValue(data: string): string {
  return data
    .replace(/([,+"\\<>;])/g, "\\$1")
    .replace(/^([ #])/, "\\$1")
    .replace(/([ ]$)/, "\\$1")
    .replace(/([\r\n\t])/, (c) => `\\${Buffer.from(c, "utf8").toString("hex").toUpperCase()}`);
}

/** A distinguished name as text, e.g. "CN=mesh issuing CA, O=example". */
export function distinguishedName(name: asn.Name): string {
  return name
    .map((rdn) =>
      rdn
        .map((atv) => {
          const type = Object.hasOwn(DN_NAMES, atv.type) ? DN_NAMES[atv.type] : atv.type;
          const value = atv.value.anyValue ? `#${hex(atv.value.anyValue)}` : escapeDnValue(atv.value.toString());
          return `${type}=${value}`;
        })
        .join("+"),
    )
    .join(", ");
}

export interface SubjectAltName {
  type: "dns" | "email" | "ip" | "url" | "id" | "dn" | "upn" | "guid";
  value: string;
}

const ID_GUID = "1.3.6.1.4.1.311.25.1";
const ID_UPN = "1.3.6.1.4.1.311.20.2.3";
const GUID_RE = /^([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})$/i;

function readGeneralName(n: asn.GeneralName): SubjectAltName | null {
  if (n.dNSName != undefined) return { type: "dns", value: n.dNSName };
  if (n.rfc822Name != undefined) return { type: "email", value: n.rfc822Name };
  if (n.iPAddress != undefined) return { type: "ip", value: n.iPAddress };
  if (n.uniformResourceIdentifier != undefined) return { type: "url", value: n.uniformResourceIdentifier };
  if (n.registeredID != undefined) return { type: "id", value: n.registeredID };
  if (n.directoryName != undefined) return { type: "dn", value: distinguishedName(n.directoryName) };
  if (n.otherName?.typeId === ID_UPN) return { type: "upn", value: AsnConvert.parse(n.otherName.value, asn.DirectoryString).toString() };
  if (n.otherName?.typeId === ID_GUID) {
    const guid = Buffer.from(AsnConvert.parse(n.otherName.value, OctetString).buffer).toString("hex");
    const m = GUID_RE.exec(guid);
    if (!m) throw new Error("Cannot initialize GeneralName from ASN.1 data. Value doesn't match to GUID regular expression.");
    // The first three fields are little-endian on the wire (Microsoft's GUID layout).
    const value = m.slice(1).map((part, i) => (i < 3 ? Buffer.from(part, "hex").reverse().toString("hex") : part)).join("-");
    return { type: "guid", value };
  }
  // Other otherNames, x400Address, ediPartyName: @peculiar/x509 could not read them either (a SAN list skips them).
  return null;
}

/** One certificate/CRL extension, with the value parsed for the types the mesh (or @peculiar/x509) interprets. */
export interface ParsedExtension {
  type: string;
  critical: boolean;
  value: ArrayBuffer;
  basicConstraints?: { ca: boolean; pathLength?: number };
  keyUsage?: number;
  extKeyUsage?: string[];
  subjectAltNames?: SubjectAltName[];
}

/**
 * Parses every extension's value the way @peculiar/x509's ExtensionFactory did: a malformed value of any type it
 * knew (basicConstraints, keyUsage, EKU, SKI, AKI, SAN, issuerAltName, CRL DPs, AIA, certificatePolicies) throws, so a
 * certificate it refused is still refused.
 */
/** Extensions whose value is only checked to parse (the mesh reads nothing from them). */
const PARSED_ONLY: Record<string, new () => object> = {
  [asn.id_ce_subjectKeyIdentifier]: asn.SubjectKeyIdentifier,
  [asn.id_ce_authorityKeyIdentifier]: asn.AuthorityKeyIdentifier,
  [asn.id_ce_cRLDistributionPoints]: asn.CRLDistributionPoints,
  [asn.id_ce_certificatePolicies]: asn.CertificatePolicies,
};

export function readExtensions(list: readonly asn.Extension[] | undefined): ParsedExtension[] {
  return (list ?? []).map((e) => {
    const out: ParsedExtension = { type: e.extnID, critical: e.critical, value: e.extnValue.buffer };
    const v = out.value;
    switch (e.extnID) {
      case asn.id_ce_basicConstraints: {
        const bc = AsnConvert.parse(v, asn.BasicConstraints);
        out.basicConstraints = { ca: bc.cA, pathLength: bc.pathLenConstraint };
        break;
      }
      case asn.id_ce_keyUsage:
        out.keyUsage = AsnConvert.parse(v, asn.KeyUsage).toNumber();
        break;
      case asn.id_ce_extKeyUsage:
        out.extKeyUsage = AsnConvert.parse(v, asn.ExtendedKeyUsage).map(String);
        break;
      case asn.id_ce_subjectAltName:
        out.subjectAltNames = readGeneralNames(AsnConvert.parse(v, asn.SubjectAlternativeName));
        break;
      case asn.id_ce_issuerAltName:
        readGeneralNames(AsnConvert.parse(v, asn.GeneralNames));
        break;
      case asn.id_pe_authorityInfoAccess:
        for (const ad of AsnConvert.parse(v, asn.AuthorityInfoAccessSyntax)) {
          // @peculiar/x509 read the location of these four methods and failed on a name it could not read.
          if ([asn.id_ad_ocsp, asn.id_ad_caIssuers, asn.id_ad_timeStamping, asn.id_ad_caRepository].includes(ad.accessMethod)) {
            if (!readGeneralName(ad.accessLocation)) throw new Error("Cannot initialize GeneralName from ASN.1 data. Unsupported string format in use.");
          }
        }
        break;
      default:
        if (Object.hasOwn(PARSED_ONLY, e.extnID)) AsnConvert.parse(v, PARSED_ONLY[e.extnID]);
    }
    return out;
  });
}

function readGeneralNames(names: readonly asn.GeneralName[]): SubjectAltName[] {
  const out: SubjectAltName[] = [];
  for (const n of names) {
    try {
      const name = readGeneralName(n);
      if (name) out.push(name);
    } catch {
      // A name that does not parse is left out, as @peculiar/x509 did; the extension itself parsed.
    }
  }
  return out;
}

/** CRL entry extensions, plus the reason code and invalidity date @peculiar/x509 decoded from them. */
export function readCrlEntryExtensions(list: readonly asn.Extension[] | undefined): ParsedExtension[] {
  const exts = readExtensions(list);
  for (const e of exts) {
    if (e.type === asn.id_ce_cRLReasons) AsnConvert.parse(e.value, asn.CRLReason);
    else if (e.type === asn.id_ce_invalidityDate) AsnConvert.parse(e.value, asn.InvalidityDate);
  }
  return exts;
}

export interface SignatureAlgorithm {
  name: string;
  hash?: { name: string };
  saltLength?: number;
}

const HASH_OIDS: Record<string, string> = {
  "1.3.14.3.2.26": "SHA-1",
  "2.16.840.1.101.3.4.2.1": "SHA-256",
  "2.16.840.1.101.3.4.2.2": "SHA-384",
  "2.16.840.1.101.3.4.2.3": "SHA-512",
};

// Signature algorithm OIDs and the WebCrypto names @peculiar/x509 gave them (the CRL check reports these names).
const SIGNATURE_OIDS: Record<string, SignatureAlgorithm> = {
  "1.2.840.10045.4.1": { name: "ECDSA", hash: { name: "SHA-1" } },
  "1.2.840.10045.4.3.2": { name: "ECDSA", hash: { name: "SHA-256" } },
  "1.2.840.10045.4.3.3": { name: "ECDSA", hash: { name: "SHA-384" } },
  "1.2.840.10045.4.3.4": { name: "ECDSA", hash: { name: "SHA-512" } },
  "1.2.840.113549.1.1.1": { name: "RSASSA-PKCS1-v1_5" },
  "1.2.840.113549.1.1.5": { name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-1" } },
  "1.2.840.113549.1.1.11": { name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-256" } },
  "1.2.840.113549.1.1.12": { name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-384" } },
  "1.2.840.113549.1.1.13": { name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-512" } },
  "1.3.101.112": { name: "Ed25519" },
  "1.3.101.113": { name: "EdDSA" },
  "1.3.101.110": { name: "X25519" },
  "1.3.101.111": { name: "ECDH-ES" },
  ...Object.fromEntries(Object.entries(HASH_OIDS).map(([oid, name]) => [oid, { name }])),
  ...Object.fromEntries(
    ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87", ...["SHA2", "SHAKE"].flatMap((h) => ["128s", "128f", "192s", "192f", "256s", "256f"].map((p) => `SLH-DSA-${h}-${p}`))].map(
      (name, i) => [`2.16.840.1.101.3.4.3.${17 + i}`, { name }],
    ),
  ),
};

const ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1";
const ID_RSASSA_PSS = "1.2.840.113549.1.1.10";

/** The signature algorithm as a WebCrypto-style description; an OID nobody named comes back as its own name. */
export function signatureAlgorithm(alg: asn.AlgorithmIdentifier): SignatureAlgorithm {
  if (alg.algorithm === ID_RSASSA_PSS) {
    if (!alg.parameters) return { name: "RSA-PSS" };
    const params = AsnConvert.parse(alg.parameters, RsaSaPssParams);
    const h = params.hashAlgorithm.algorithm;
    return { name: "RSA-PSS", hash: { name: Object.hasOwn(HASH_OIDS, h) ? HASH_OIDS[h] : (SIGNATURE_OIDS[h]?.name ?? h) }, saltLength: params.saltLength };
  }
  if (alg.algorithm === ID_EC_PUBLIC_KEY) {
    // A key algorithm where a signature algorithm belongs: no hash, so the CRL check refuses it.
    if (!alg.parameters) throw new TypeError("Cannot get required parameters from EC algorithm");
    return { name: "ECDSA" };
  }
  return Object.hasOwn(SIGNATURE_OIDS, alg.algorithm) ? { ...SIGNATURE_OIDS[alg.algorithm] } : { name: alg.algorithm };
}

const ID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";

/**
 * A PKCS#10 request for `subject` (a single CN), carrying `publicKey` and signed by `privateKey` with ECDSA/SHA-256:
 * the DER of CertificationRequestInfo is signed as-is, so nothing is re-encoded between signing and sending.
 */
export function createEcdsaCsr(privateKey: KeyObject, publicKey: KeyObject, commonName: string): Uint8Array {
  const subject = new asn.Name([
    new asn.RelativeDistinguishedName([new asn.AttributeTypeAndValue({ type: "2.5.4.3", value: new asn.AttributeValue({ printableString: commonName }) })]),
  ]);
  const info = new CertificationRequestInfo({
    version: 0,
    subject,
    subjectPKInfo: AsnConvert.parse(publicKey.export({ type: "spki", format: "der" }), asn.SubjectPublicKeyInfo),
    attributes: new Attributes(),
  });
  const signature = cryptoSign("sha256", Buffer.from(AsnConvert.serialize(info)), { key: privateKey, dsaEncoding: "der" });
  const csr = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: new asn.AlgorithmIdentifier({ algorithm: ID_ECDSA_WITH_SHA256 }),
    signature: new Uint8Array(signature).buffer,
  });
  return new Uint8Array(AsnConvert.serialize(csr));
}
