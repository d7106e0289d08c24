/**
 * The base of every error nodemesh throws on purpose. `code` is stable and
 * documented (NM_ERR_* for our own conditions; errno names like EPERM where
 * the kernel said so), `message` names the thing and the fix.
 */
export class MeshError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}
