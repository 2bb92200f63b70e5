// Types of @relay/client (written by hand beside the plain JavaScript in this folder; the wire objects are in
// wire.d.ts and checked against Relay's OpenAPI document).

import type {
  AttemptList,
  ClusterView,
  DeadLetter,
  DeadLetterPage,
  DeadLetterReason,
  Destination,
  DestinationPage,
  DestinationState,
  Event,
  EventType,
  ReplayResult,
  Stats,
  Subscribed,
  Task,
  TaskPage,
  TaskStatus,
} from "./wire.js";

export type * from "./wire.js";
export { RelayClient } from "./subscriber.js";
export type { SubscribeHandlers, SubscriberOptions, SubscriberStatus } from "./subscriber.js";

/** Seconds a request may take before it counts as unanswered (a stream: until its headers arrive). */
export const DEFAULT_TIMEOUT_S: number;
/** Tries after the first for a submission or a read. */
export const DEFAULT_MAX_RETRIES: number;
/** The first backoff's ceiling in seconds, doubling on each retry. */
export const DEFAULT_RETRY_BASE_DELAY_S: number;
/** The longest wait between two tries in seconds; a longer Retry-After is not waited for. */
export const DEFAULT_RETRY_MAX_DELAY_S: number;
/** Seconds without a byte after which a stream counts as dead and is opened again. */
export const DEFAULT_IDLE_TIMEOUT_S: number;
/** Items per page when a list is followed. */
export const DEFAULT_PAGE_SIZE: number;
/** Seconds a webhook's timestamp may be from now, either way. */
export const DEFAULT_TOLERANCE_S: number;
/** The most bytes of one answer (or one streamed event) read into memory. */
export const DEFAULT_MAX_ANSWER_BYTES: number;
/** The most signatures a webhook-signature header may carry. */
export const MAX_SIGNATURES: number;

export interface RelayOptions {
  /** The fetch to use (a proxy's, a test's); default: the global one. */
  fetch?: typeof fetch;
  /** Seconds per request (default 30). */
  timeout?: number;
  /** Tries after the first for submissions and reads, on no answer, 429 and 503 (default 8; 0: none). */
  maxRetries?: number;
  /** First backoff ceiling in seconds, doubling per retry, with jitter (default 0.5). */
  retryBaseDelay?: number;
  /** Longest wait between tries in seconds (default 30); a longer Retry-After is not waited for. */
  retryMaxDelay?: number;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** The most bytes of one answer, or of one streamed event, read (default 64 MiB); more is an UnexpectedAnswerError. */
  maxAnswerBytes?: number;
}

export interface CallOptions {
  /** Abort the call (and its retries): the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface SubmitOptions extends CallOptions {
  /** Where the task's events are POSTed, signed. */
  webhook?: string | URL;
  /** The event types posted to the webhook (default: the final ones). */
  events?: EventType[];
  /** Push the events to a WebSocket that follows the task first (the webhook then only for what is not acked). */
  websocket?: boolean;
  /** Start no earlier than this (a Date, or RFC 3339 with its offset). */
  runAt?: Date | string;
  /** Start this many seconds from now (not with runAt). */
  delayS?: number;
  /** Your own key (one submission per key per 24 h); by default one is made per call and kept for its retries. */
  idempotencyKey?: string;
}

export interface TaskListOptions extends CallOptions {
  status?: TaskStatus;
  kind?: string;
  /** The admin token: one tenant's tasks. */
  tenant?: string;
  /** created_at at or after this. */
  since?: Date | string;
  /** created_at before this. */
  until?: Date | string;
  /** Items per request (1..500); the iterator follows every page. */
  pageSize?: number;
}

export interface StreamOptions extends CallOptions {
  /** Events after this seq (default 0: all that are kept). */
  afterSeq?: number;
  /** Seconds without a byte before the stream counts as dead and is opened again (default 45). */
  idleTimeout?: number;
  /** Called with each `subscribed` message (again after every resume). */
  onSubscribed?: (frame: Subscribed) => void;
}

export interface WaitOptions extends CallOptions {
  /** Seconds to wait at most (default: no limit); then a WaitTimeoutError. */
  timeout?: number | null;
}

/** A list that follows `next_cursor`: `for await (const item of list)`. */
export interface Pager<T, P extends { items: unknown[]; next_cursor: string | null }> extends AsyncIterable<T> {
  /** Page by page, as Relay answered them. */
  pages(): AsyncIterableIterator<Omit<P, "items"> & { items: T[] }>;
  /** Every item of every page in one array. */
  toArray(): Promise<T[]>;
}

/** A task as Relay answered it, with the methods that concern it. JSON of it is the wire Task. */
export interface TaskHandle extends Task {
  /** Wait for it to end; the task as it ended. */
  wait(options?: WaitOptions): Promise<TaskHandle>;
  /** Read it again. */
  refresh(options?: CallOptions): Promise<TaskHandle>;
  cancel(options?: CallOptions): Promise<TaskHandle>;
  stream(options?: StreamOptions): AsyncGenerator<Event, void, undefined>;
  events(options?: CallOptions & { afterSeq?: number }): Promise<Event[]>;
  deliveries(options?: CallOptions): Promise<AttemptList>;
}

export interface TasksApi {
  /** Submit a task; retried with the same Idempotency-Key on no answer, 429 and 503, so it is stored once. */
  submit(kind: string, input?: unknown, options?: SubmitOptions): Promise<TaskHandle>;
  get(taskId: string, options?: CallOptions): Promise<TaskHandle>;
  /** Tasks, newest first. */
  list(options?: TaskListOptions): Pager<TaskHandle, TaskPage>;
  /** Cancel a task that has not ended (ConflictError when it has). */
  cancel(taskId: string, options?: CallOptions): Promise<TaskHandle>;
  /** Its stored events after `afterSeq`, oldest first, every page read. */
  events(taskId: string, options?: CallOptions & { afterSeq?: number }): Promise<Event[]>;
  deliveries(taskId: string, options?: CallOptions): Promise<AttemptList>;
  /** Its events live, each once and in order, up to the final one; resumes by itself after a drop. */
  stream(taskId: string, options?: StreamOptions): AsyncGenerator<Event, void, undefined>;
  /** Wait for it to end; the task as it ended. */
  wait(taskId: string, options?: WaitOptions): Promise<TaskHandle>;
}

export interface DeadLetterListOptions extends CallOptions {
  reason?: DeadLetterReason;
  tenant?: string;
  taskId?: string;
  since?: Date | string;
  until?: Date | string;
  pageSize?: number;
}

export interface ReplayBulkOptions extends CallOptions {
  /** true: count what matches and send nothing. Must be said. */
  dryRun: boolean;
  reason?: DeadLetterReason;
  tenant?: string;
  since?: Date | string;
  until?: Date | string;
}

export interface DeadLettersApi {
  /** Newest first. */
  list(options?: DeadLetterListOptions): Pager<DeadLetter, DeadLetterPage>;
  get(id: string, options?: CallOptions): Promise<DeadLetter>;
  /** Send it again: the same Event and webhook-id, on a fresh schedule. */
  replay(id: string, options?: CallOptions): Promise<number>;
  replayBulk(options: ReplayBulkOptions): Promise<ReplayResult>;
  delete(id: string, options?: CallOptions): Promise<void>;
}

export interface DestinationListOptions extends CallOptions {
  state?: DestinationState;
  tenant?: string;
  pageSize?: number;
}

export interface DestinationUpdate extends CallOptions {
  /** 1..1000 attempts in flight at once, across the cluster. */
  maxInFlight?: number;
  /** Attempts started per second at most; null removes the rate. */
  ratePerS?: number | null;
}

export interface DestinationsApi {
  /** Worst first: open, paused, degraded, healthy; then most owed. */
  list(options?: DestinationListOptions): Pager<Destination, DestinationPage>;
  get(id: string, options?: CallOptions): Promise<Destination>;
  /** Hold its webhooks (none sent, none dead-lettered) until resume. */
  pause(id: string, options?: CallOptions): Promise<Destination>;
  resume(id: string, options?: CallOptions): Promise<Destination>;
  update(id: string, caps: DestinationUpdate): Promise<Destination>;
}

export interface SigningSecretsApi {
  /** `whsec_…`, the secret that signs this tenant's webhooks. */
  get(options?: CallOptions): Promise<string>;
  /** A new secret; the old one keeps signing beside it for 24 h. */
  rotate(options?: CallOptions): Promise<string>;
}

export interface OpsApi {
  /** The secret that signs operational events. */
  signingSecret(options?: CallOptions): Promise<string>;
  cluster(options?: CallOptions): Promise<ClusterView>;
  /** false when there was no loss to acknowledge. */
  acknowledgeStoreLoss(options?: CallOptions): Promise<boolean>;
}

export class Relay {
  /**
   * @param url Relay's base URL, such as http://127.0.0.1:8000
   * @param apiKey a tenant's API key, or the admin token (every tenant's things, and `ops`)
   */
  constructor(url: string, apiKey: string, options?: RelayOptions);
  readonly tasks: TasksApi;
  readonly deadLetters: DeadLettersApi;
  readonly destinations: DestinationsApi;
  readonly signingSecret: SigningSecretsApi;
  /** Needs the admin token. */
  readonly ops: OpsApi;
  /** Figures for dashboards: the tenant's own; every tenant's for the admin token, or one's with `tenant`. */
  stats(options?: CallOptions & { tenant?: string }): Promise<Stats>;
}

export interface VerifyOptions {
  /** Seconds the timestamp may be from now, either way (default 300). */
  toleranceS?: number;
  /** The time now in milliseconds (default Date.now). */
  now?: () => number;
}

/**
 * Check a webhook's Standard Webhooks signature and timestamp; its Event, or a WebhookVerificationError (also for a
 * secret that is not `whsec_` and base64, or none at all). A body or secret of another type, or a toleranceS that is
 * not a finite number >= 0, is a TypeError.
 *
 * @param body the raw request body, as received
 * @param headers the request's headers (a Headers, a Map, or Node's plain object)
 * @param secret `whsec_…`; during a rotation, both
 */
export function verifyWebhook(
  body: string | Uint8Array | ArrayBuffer,
  headers: Headers | Map<string, string> | Record<string, string | string[] | undefined>,
  secret: string | readonly string[],
  options?: VerifyOptions,
): Promise<Event>;

export class RelayError extends Error {}

export class ApiError extends RelayError {
  constructor(
    status: number,
    detail: string,
    info?: { body?: unknown; retryAfterS?: number | null; method?: string; path?: string },
  );
  /** The HTTP status. */
  readonly status: number;
  /** Relay's human-readable reason. */
  readonly detail: string;
  /** The parsed error body (an ErrorBody from Relay), or null. */
  readonly body: unknown;
  /** Seconds Retry-After asked for, or null. */
  readonly retryAfterS: number | null;
}
/** 400, 413: a request Relay cannot take. */
export class BadRequestError extends ApiError {}
/** 422: an unknown kind, an input that does not fit it, a refused webhook URL. */
export class InvalidError extends BadRequestError {}
/** 401. */
export class UnauthorizedError extends ApiError {}
/** 403. */
export class ForbiddenError extends ApiError {}
/** 404. */
export class NotFoundError extends ApiError {}
/** 409. */
export class ConflictError extends ApiError {}
/** 429, after the retries a submission or a read gets. */
export class RateLimitedError extends ApiError {}
/** 503, after the retries a submission or a read gets. */
export class UnavailableError extends ApiError {}
/**
 * An answer this client cannot read: a 2xx that is not JSON (a proxy's page, say), one over maxAnswerBytes, a
 * redirect (Relay never sends one), a list whose cursors would never end.
 */
export class UnexpectedAnswerError extends RelayError {}
/** No answer at all: refused, reset, DNS. */
export class TransportError extends RelayError {}
/** No answer within the client's timeout. */
export class RequestTimeoutError extends TransportError {}
/** A task's stream ended for good with an error. */
export class StreamError extends RelayError {
  readonly code: string;
}
/** wait() gave up. */
export class WaitTimeoutError extends RelayError {
  readonly taskId: string;
  readonly timeoutS: number;
}
/** verifyWebhook() refused a request. */
export class WebhookVerificationError extends RelayError {}
