/**
 * One error base class with stable string codes (undici style). Library code throws these; the CLI maps them to exit
 * codes and messages, the HTTP layers map them to JSON error bodies. `message` is safe to show to the caller; anything
 * internal goes into `cause`, which is logged and never rendered.
 */
export class MeshError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A value given by the user (flag, config field, file) is wrong. `field` names it. */
export class InvalidArgumentError extends MeshError {
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super("MCPMESH_INVALID_ARGUMENT", `${field}: ${message}`, options);
    this.field = field;
  }
}

/** Something on disk (CA directory, identity directory, database) is missing, corrupt or unreadable. */
export class StateError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("MCPMESH_STATE", message, options);
  }
}

export function isMeshError(e: unknown): e is MeshError {
  return e instanceof MeshError;
}
