// Types of the browser subscriber (subscriber.js, which Relay serves as /static/relay.js).

import type { Event, Task, TaskStatus } from "./wire.js";

export interface SubscriberOptions {
  /** RELAY_WS_PING_INTERVAL on the server, in milliseconds (default 20000). */
  pingIntervalMs?: number;
  /** RELAY_WS_PING_TIMEOUT on the server, in milliseconds (default 20000). */
  pingTimeoutMs?: number;
  /** The first reconnect's ceiling, doubling (default 500). */
  backoffBaseMs?: number;
  /** The longest reconnect wait (default 20000). */
  backoffMaxMs?: number;
  /** A connection open this long resets the backoff (default 5000). */
  healthyAfterMs?: number;
  /** Over Server-Sent Events: the first wait before a WebSocket is tried again, doubling (default 5000). */
  probeBaseMs?: number;
  /** ... up to this (default 60000). */
  probeMaxMs?: number;
  /** Every status, of the connection and of every task. */
  onStatus?: ((status: SubscriberStatus) => void) | null;
}

/** What the subscriber reports: always a `type` and a human `text`. */
export interface SubscriberStatus {
  type: "connecting" | "open" | "closed" | "reconnecting" | "fallback" | "subscribed" | "recovered" | "error";
  text: string;
  taskId?: string;
  channel?: "websocket" | "sse";
  delayMs?: number;
  attempt?: number;
  status?: TaskStatus;
  lastSeq?: number;
  afterSeq?: number;
  recovered?: boolean;
  task?: Task;
  code?: string;
  message?: string;
}

export interface SubscribeHandlers {
  /** Each Event of the task, once, in seq order; it is acked when this returns (not when it throws). */
  onEvent?: (event: Event) => void;
  onStatus?: (status: SubscriberStatus) => void;
}

/** Follows tasks over one WebSocket (Server-Sent Events where none can open), resuming after every drop. */
export class RelayClient {
  constructor(baseUrl?: string, options?: SubscriberOptions);
  /** Follow a task from where this tab last saw it (sessionStorage), or from its first event. */
  subscribe(taskId: string, token: string, handlers?: SubscribeHandlers): void;
  unsubscribe(taskId: string): void;
  /** Stop for good: no reconnect until the next subscribe(). */
  close(): void;
  /** Lose the connection as a network drop would (a demo aid). */
  dropConnection(): void;
  /** The last seq handed to onEvent for the task (0: none yet). */
  lastSeq(taskId: string): number;
  isOpen(): boolean;
}
