import { MeshError } from "../lib/errors.ts";

/**
 * The CA core's errors. Each has a stable code and a message meant for the caller (the enrolling or renewing side);
 * the HTTPS API maps codes to statuses (ca/server.ts), the CLI to exit messages. Internals never go in the message.
 */
export class TokenRejectedError extends MeshError {
  constructor(code: "MCPMESH_TOKEN_UNKNOWN" | "MCPMESH_TOKEN_EXPIRED" | "MCPMESH_TOKEN_USED", message: string) {
    super(code, message);
  }
}

export class CsrRejectedError extends MeshError {
  constructor(code: "MCPMESH_BAD_CSR" | "MCPMESH_WEAK_KEY", message: string) {
    super(code, message);
  }
}

export class RenewRejectedError extends MeshError {
  constructor(code: "MCPMESH_CERT_REVOKED" | "MCPMESH_CERT_EXPIRED" | "MCPMESH_CERT_UNKNOWN" | "MCPMESH_IDENTITY_MISMATCH" | "MCPMESH_NO_CLIENT_CERT", message: string) {
    super(code, message);
  }
}

export class NotFoundError extends MeshError {
  constructor(message: string) {
    super("MCPMESH_NOT_FOUND", message);
  }
}

export class ForbiddenError extends MeshError {
  constructor(message: string) {
    super("MCPMESH_FORBIDDEN", message);
  }
}

export class CaExistsError extends MeshError {
  constructor(dir: string) {
    super("MCPMESH_CA_EXISTS", `a CA already exists in ${dir}; refusing to overwrite it (choose another --dir)`);
  }
}

/** The CA cannot issue right now (a signing thread stopped, or the CA is shutting down); nothing was issued. HTTP 503. */
export class CaUnavailableError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("MCPMESH_CA_UNAVAILABLE", message, options);
  }
}
