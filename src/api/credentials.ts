/**
 * How a client finds and trusts the controller, shared by the controller
 * (which writes the admin credentials) and every client (the CLI, the node
 * proxy), so that a client loads nothing of the controller itself.
 */

/** The controller's data directory, and the proxies' state under it. */
export const DEFAULT_DATA_DIR = '/var/lib/nodemesh';

/** The name in the controller's server certificate that clients verify. */
export const SERVER_NAME = 'nodemesh-controller';

/** A credentials file (the admin's, written by the controller; `nodemesh` reads it). */
export interface Credentials {
  apiVersion: string;
  kind: 'Credentials';
  controller: string;
  serverName: string;
  ca: string;
  cert: string;
  key: string;
}
