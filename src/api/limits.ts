/**
 * Limits on what users and peers send the controller, in one place: the
 * CLI checks them before it parses or sends, the controller before it
 * parses or stores, and each error names the limit it hit.
 */

export const MiB = 1024 * 1024;

export const LIMITS = Object.freeze({
  /** Objects and arrays inside one another in a resource document; the deepest nodemesh resource needs about 10. */
  maxNestingDepth: 32,
  /** Documents in one apply or delete, after splitting YAML streams. */
  maxDocuments: 1000,
  /** Bytes of manifests the CLI reads for one command (files and stdin together). */
  maxManifestBytes: 4 * MiB,
  /** A gRPC message to the controller (`--max-request-bytes`): the server refuses larger, the client does not send them. */
  maxRequestBytes: 4 * MiB,
  /** A gRPC message from the controller: a List of a large mesh (node snapshots go in chunks). */
  maxResponseBytes: 64 * MiB,
  /** Total size of one resource's annotations, as Kubernetes (TotalAnnotationSizeLimitB). */
  maxAnnotationsBytes: 256 * 1024,
  /** A name, namespace or resourceVersion in a Get, List, Delete or Watch request (a DNS-1123 subdomain at most). */
  maxRequestNameChars: 253,
  /** A label selector in a List request. */
  maxSelectorChars: 4096,
  /** The source (file name) of a document in an Apply request. */
  maxSourceChars: 1024,
  /** Events queued for a Watch client that does not read; past this its watch ends (RESOURCE_EXHAUSTED). */
  maxWatchBacklog: 10_000,
  /** Addresses a node reports in its hello (its IPv4 and IPv6, perhaps a few more). */
  maxNodeAddresses: 8,
  /**
   * Items a node holds (every Workload and Service of the cluster, its policies): five
   * times the 50,000 workloads and 5,000 services nodemesh is built for. A larger snapshot
   * is refused at its first part (`nodemesh proxy --max-config-items`).
   */
  maxNodeConfigItems: 250_000,
  /** Characters kept of what a node says about itself (its version, why it refused a config). */
  maxNodeTextChars: 1024,
  /** Characters of user input an error message quotes before it cuts. */
  maxQuotedChars: 64,
  /** A gRPC status message as sent (percent-encoded), well under grpc's 8 KiB metadata limit. */
  maxStatusDetailsBytes: 4096,
});

/** `n` bytes as people read it: 4 MiB, 256 KiB, 512 bytes. */
export function formatBytes(n: number): string {
  const [unit, size] = n >= MiB ? ['MiB', MiB] : n >= 1024 ? ['KiB', 1024] : ['bytes', 1];
  return `${n % size === 0 ? n / size : (n / size).toFixed(1)} ${unit}`;
}

interface WellFormedString {
  isWellFormed(): boolean;
  toWellFormed(): string;
}

/** No lone surrogate (ES2024 String.prototype.isWellFormed; the lib target is older). */
export function isWellFormed(s: string): boolean {
  return (s as unknown as WellFormedString).isWellFormed();
}

/** Lone surrogates replaced by U+FFFD. */
export function toWellFormed(s: string): string {
  return (s as unknown as WellFormedString).toWellFormed();
}

/**
 * User input as an error message quotes it: JSON-quoted (so control
 * characters and lone surrogates show as escapes), cut after `max`
 * characters with a note of how much was left out.
 */
export function quote(input: unknown, max: number = LIMITS.maxQuotedChars): string {
  const s = typeof input === 'string' ? input : String(input);
  if (s.length <= max) return JSON.stringify(s);
  // Never cut a surrogate pair in half: that would invent a lone surrogate.
  let end = max;
  const last = s.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${JSON.stringify(s.slice(0, end))}… (${s.length - end} more characters)`;
}

/** A name from user input in a message: as is when short and printable, else quoted and cut (see quote). */
export function shown(input: string, max: number = LIMITS.maxQuotedChars): string {
  return input.length <= max && /^[\x21-\x7e]+$/.test(input) ? input : quote(input, max);
}

/** Free text kept from a peer (a reason, a version): well-formed and at most `max` characters. */
export function clip(text: string, max: number): string {
  const s = toWellFormed(text);
  if (s.length <= max) return s;
  const last = s.charCodeAt(max - 1);
  return s.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max) + '…';
}
