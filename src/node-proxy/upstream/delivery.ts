/**
 * Delivery from the client's own address (see docs/architecture.md,
 * 'Delivery from the client address'). The proxy's connection to a pod of
 * this node is made inside the pod's network namespace, bound to the client's
 * address with IP_TRANSPARENT and marked NM_DELIVERY_MARK: the pod sees its
 * real client (so do its logs and ipBlocks), and every client has its own
 * port range toward it instead of sharing the proxy's one.
 *
 * Each enrolled pod's netns gets, once, tcp_fwmark_accept and a fwmark rule
 * to a table that delivers every address locally: the pod's replies carry the
 * mark of the SYN that opened the connection and come back to the proxy's
 * socket over loopback, whatever the pod's routes say. The data path lets
 * marked sockets through unredirected and lets their SYNs into STRICT pods.
 *
 * A pod whose netns could not be prepared, a target without a netns, or a
 * client of the other address family is delivered from the proxy's own
 * address, as before; `status()` says how many pods are in which case.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';

import { abi, netnsDelivery, transparentSocket, type DeliveryRouting } from '../../bpf';
import type { Logger } from '../../log';

/** The rule and table in each pod's netns; the table id and rule priority are the proxy's. */
export const DELIVERY_ROUTING: DeliveryRouting = { mark: abi.DELIVERY_MARK, mask: abi.DELIVERY_MASK, table: 15006, priority: 15006 };

export interface DeliveryStatus {
  /** 'client': pods see their clients' addresses; 'proxy': every delivery is from the proxy's address. */
  mode: 'client' | 'proxy';
  /** Enrolled pods prepared for delivery from the client's address. */
  pods: number;
  /** Pods that could not be prepared (delivered to from the proxy's address), with the first reason. */
  failed: number;
  firstFailure?: string;
  /** Deliveries that fell back to the proxy's address since start (a socket that could not be made). */
  fallbacks: number;
}

function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && net.isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

export class ClientAddressDelivery {
  readonly #log: Logger;
  readonly #enabled: boolean;
  /** netns path -> an open fd of it (the socket is made in the namespace this names). */
  readonly #fds = new Map<string, number>();
  readonly #failed = new Map<string, string>();
  #fallbacks = 0;
  #fallbackLogged = false;

  constructor(o: { log: Logger; enabled: boolean }) {
    this.#log = o.log;
    this.#enabled = o.enabled;
  }

  get enabled(): boolean {
    return this.#enabled;
  }

  /**
   * Prepares an enrolled pod's netns. Never throws: a pod that cannot be
   * prepared is logged once and delivered to from the proxy's address.
   */
  async prepare(netnsPath: string): Promise<void> {
    if (!this.#enabled) {
      // Delivery from the proxy's address: a rule an earlier proxy of this node put there goes (nothing marks packets now).
      await netnsDelivery(netnsPath, false, DELIVERY_ROUTING).catch((err: Error) => this.#log.warn({ netns: netnsPath, err: err.message }, 'cannot remove the delivery rule'));
      return;
    }
    if (this.#fds.has(netnsPath)) return;
    try {
      await netnsDelivery(netnsPath, true, DELIVERY_ROUTING);
      this.#fds.set(netnsPath, fs.openSync(netnsPath, 'r'));
      this.#failed.delete(netnsPath);
    } catch (err) {
      const reason = (err as Error).message;
      this.#failed.set(netnsPath, reason);
      this.#log.warn({ netns: netnsPath, err: reason }, 'cannot deliver to this pod from its clients\' addresses: delivering from the proxy address');
    }
  }

  /**
   * The pod left this node's mesh: its fd is closed. Its rule stays: the
   * connections delivered to it so far still need their replies routed back,
   * and without marked sockets the rule matches nothing. A netns that goes
   * takes it along; a proxy started with `--deliver-from proxy` removes it.
   */
  release(netnsPath: string): void {
    this.#failed.delete(netnsPath);
    const fd = this.#fds.get(netnsPath);
    if (fd === undefined) return;
    this.#fds.delete(netnsPath);
    fs.closeSync(fd);
  }

  /**
   * A socket bound to `source` in the netns of the target pod, not yet
   * connected; undefined when this delivery is from the proxy's address.
   */
  socket(netnsPath: string | undefined, target: string, source: string | undefined): net.Socket | undefined {
    if (!netnsPath || !source) return undefined;
    const fd = this.#fds.get(netnsPath);
    if (fd === undefined) return undefined;
    const from = plainIp(source);
    const family = net.isIPv4(target) ? 4 : 6;
    if ((net.isIPv4(from) ? 4 : 6) !== family) return undefined;
    let sock = -1;
    try {
      sock = transparentSocket(fd, family, from, DELIVERY_ROUTING.mark);
      // allowHalfOpen: the destination's FIN must not also end the pod's direction.
      return new net.Socket({ fd: sock, allowHalfOpen: true, readable: true, writable: true });
    } catch (err) {
      if (sock >= 0) fs.closeSync(sock);
      this.#fallbacks++;
      if (!this.#fallbackLogged) {
        this.#fallbackLogged = true;
        this.#log.warn({ netns: netnsPath, source: from, err: (err as Error).message }, 'cannot deliver from the client\'s address: delivering from the proxy address (logged once)');
      }
      return undefined;
    }
  }

  status(): DeliveryStatus {
    const first = this.#failed.values().next();
    return {
      mode: this.#enabled ? 'client' : 'proxy',
      pods: this.#fds.size,
      failed: this.#failed.size,
      ...(first.done ? {} : { firstFailure: first.value }),
      fallbacks: this.#fallbacks,
    };
  }

  /** Closes the fds; the pods' rules stay for the next process (a hand-over shares them), and mean nothing without marked sockets. */
  close(): void {
    for (const fd of this.#fds.values()) fs.closeSync(fd);
    this.#fds.clear();
  }
}
