// `Relay`: the HTTP API as objects and promises. Lists are async iterables that follow `next_cursor`; a task's events
// stream over Server-Sent Events; times given as numbers are seconds, as in the Python client.

import { UnexpectedAnswerError, WaitTimeoutError } from "./errors.js";
import { Transport, sleep } from "./http.js";
import { ENDED, streamEvents } from "./stream.js";

// Items per page when a list is followed (the server allows 1 to 500).
export const DEFAULT_PAGE_SIZE = 100;
// How often wait() reads a task again when its final event is in but its record is not yet (it never is for long).
const SETTLE_POLL_S = 0.05;

export class Relay {
  /**
   * @param {string} url Relay's base URL, such as http://127.0.0.1:8000
   * @param {string} apiKey a tenant's API key, or the admin token for `ops` and every tenant's things
   * @param {import("./index.js").RelayOptions} [options]
   */
  constructor(url, apiKey, options = {}) {
    const transport = new Transport(url, apiKey, options);
    Object.defineProperty(this, "transport", { value: transport, enumerable: false });
    this.tasks = new Tasks(transport);
    this.deadLetters = new DeadLetters(transport);
    this.destinations = new Destinations(transport);
    this.signingSecret = new SigningSecrets(transport);
    this.ops = new Ops(transport);
  }

  /** Figures for dashboards: the tenant's own; every tenant's for the admin token, or one's with `tenant`. */
  stats({ tenant, signal } = {}) {
    return this.transport.request("GET", "/v1/stats", { query: { tenant }, retry: true, signal });
  }
}

/** A task as Relay answered it, with the methods that concern it (`await task.wait()`). JSON of it is the wire Task. */
export class TaskHandle {
  constructor(tasks, wire) {
    Object.defineProperty(this, "_tasks", { value: tasks, enumerable: false });
    Object.assign(this, wire);
  }

  /** Wait for this task to end and return it as it ended. */
  wait(options) {
    return this._tasks.wait(this.id, options);
  }

  /** Read this task again. */
  refresh(options) {
    return this._tasks.get(this.id, options);
  }

  cancel(options) {
    return this._tasks.cancel(this.id, options);
  }

  stream(options) {
    return this._tasks.stream(this.id, options);
  }

  events(options) {
    return this._tasks.events(this.id, options);
  }

  deliveries(options) {
    return this._tasks.deliveries(this.id, options);
  }
}

/** A list that follows `next_cursor`: `for await (const item of list)`, or `list.pages()` a page at a time. */
export class Pager {
  constructor(transport, path, query, wrap = (item) => item, signal = undefined) {
    this.transport = transport;
    this.path = path;
    this.query = query;
    this.wrap = wrap;
    this.signal = signal;
  }

  async *pages() {
    let cursor;
    const followed = new Set(); // a cursor answered again would page forever: not Relay's answer
    do {
      const page = await this.transport.request("GET", this.path, {
        query: { ...this.query, cursor },
        retry: true,
        signal: this.signal,
      });
      if (!Array.isArray(page?.items))
        throw new UnexpectedAnswerError(`GET ${this.path} answered a page with no items`);
      yield { ...page, items: page.items.map(this.wrap) };
      followed.add(cursor);
      cursor = page.next_cursor;
      if (cursor && followed.has(cursor)) {
        throw new UnexpectedAnswerError(
          `GET ${this.path} answered a cursor it had answered before: the list would not end`,
        );
      }
    } while (cursor);
  }

  async *[Symbol.asyncIterator]() {
    for await (const page of this.pages()) yield* page.items;
  }

  /** Every item of every page, in one array (mind the size of what you ask for). */
  async toArray() {
    const items = [];
    for await (const item of this) items.push(item);
    return items;
  }
}

class Tasks {
  constructor(transport) {
    this.transport = transport;
  }

  /**
   * Submit a task. Retried on no answer, 429 and 503 with the same Idempotency-Key, so it is stored once.
   *
   * @param {string} kind
   * @param {unknown} input
   * @param {import("./index.js").SubmitOptions} [options]
   */
  async submit(kind, input = null, options = {}) {
    const { webhook, events, websocket, runAt, delayS, idempotencyKey, signal } = options;
    if (runAt !== undefined && runAt !== null && delayS !== undefined && delayS !== null) {
      throw new TypeError("give runAt or delayS, not both");
    }
    if (events !== undefined && !webhook) throw new TypeError("events are the webhook's: give a webhook URL too");
    const body = { kind, input };
    if (webhook)
      body.webhook = { url: typeof webhook === "string" ? webhook : String(webhook), ...(events ? { events } : {}) };
    if (websocket !== undefined) body.websocket = Boolean(websocket);
    if (runAt !== undefined && runAt !== null)
      body.run_at = runAt instanceof Date ? runAt.toISOString() : String(runAt);
    if (delayS !== undefined && delayS !== null) body.delay_s = delayS;
    // One key per call, made before the first try: every retry of this call carries it.
    const key = idempotencyKey ?? crypto.randomUUID();
    const wire = await this.transport.request("POST", "/v1/tasks", {
      body,
      headers: { "Idempotency-Key": key },
      retry: true,
      signal,
    });
    return new TaskHandle(this, wire);
  }

  async get(taskId, { signal } = {}) {
    return new TaskHandle(this, await this.transport.request("GET", taskPath(taskId), { retry: true, signal }));
  }

  /** Tasks, newest first (`status`, `kind`, `tenant`, `since`, `until` as in GET /v1/tasks), every page followed. */
  list({ status, kind, tenant, since, until, pageSize = DEFAULT_PAGE_SIZE, signal } = {}) {
    const query = { status, kind, tenant, since, until, limit: pageSize };
    return new Pager(this.transport, "/v1/tasks", query, (wire) => new TaskHandle(this, wire), signal);
  }

  /** Cancel a task that has not ended (a ConflictError when it has). */
  async cancel(taskId, { signal } = {}) {
    const wire = await this.transport.request("POST", `${taskPath(taskId)}/cancel`, { signal });
    return new TaskHandle(this, wire);
  }

  /** The task's stored events after `afterSeq`, oldest first, every page followed. */
  async events(taskId, { afterSeq = 0, signal } = {}) {
    const events = [];
    let after = afterSeq;
    for (;;) {
      const page = await this.transport.request("GET", `${taskPath(taskId)}/events`, {
        query: { after_seq: after },
        retry: true,
        signal,
      });
      if (!Array.isArray(page?.events))
        throw new UnexpectedAnswerError(`GET ${taskPath(taskId)}/events answered no events`);
      for (const event of page.events) events.push(event);
      if (page.next_after_seq === null || page.next_after_seq === undefined) return events;
      // Each page starts after the last: one that does not move on would be asked for forever.
      if (!(page.next_after_seq > after)) {
        throw new UnexpectedAnswerError(
          `GET ${taskPath(taskId)}/events answered next_after_seq ${page.next_after_seq} after ${after}`,
        );
      }
      after = page.next_after_seq;
    }
  }

  /** Every delivery attempt of the task's events, and its webhooks' dead-lettered and replayed steps. */
  deliveries(taskId, { signal } = {}) {
    return this.transport.request("GET", `${taskPath(taskId)}/deliveries`, { retry: true, signal });
  }

  /** The task's events, live, each once and in order, up to its final event; resumes by itself after a drop. */
  stream(taskId, options = {}) {
    return streamEvents(this.transport, taskId, options);
  }

  /**
   * Wait for a task to end, following its stream; the task as it ended.
   *
   * @param {string} taskId
   * @param {{timeout?: number | null, signal?: AbortSignal}} [options] timeout in seconds (null: no limit)
   */
  async wait(taskId, { timeout = null, signal } = {}) {
    const timer = new AbortController();
    const timedOut = new WaitTimeoutError(taskId, timeout);
    const onAbort = () => timer.abort(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const deadline = timeout === null ? null : setTimeout(() => timer.abort(timedOut), timeout * 1000);
    try {
      let task = await this.get(taskId, { signal: timer.signal });
      if (ENDED.has(task.status)) return task;
      for await (const _event of this.stream(taskId, { signal: timer.signal })) {
        // Nothing to do with each event: the stream ends after the final one.
      }
      for (;;) {
        task = await this.get(taskId, { signal: timer.signal });
        if (ENDED.has(task.status)) return task;
        await sleep(SETTLE_POLL_S, timer.signal);
      }
    } catch (error) {
      if (timer.signal.aborted && timer.signal.reason === timedOut) throw timedOut;
      throw error;
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener("abort", onAbort);
    }
  }
}

class DeadLetters {
  constructor(transport) {
    this.transport = transport;
  }

  /** Dead letters, newest first, every page followed. */
  list({ reason, tenant, taskId, since, until, pageSize = DEFAULT_PAGE_SIZE, signal } = {}) {
    const query = { reason, tenant, task_id: taskId, since, until, limit: pageSize };
    return new Pager(this.transport, "/v1/dead-letters", query, undefined, signal);
  }

  get(id, { signal } = {}) {
    return this.transport.request("GET", deadLetterPath(id), { retry: true, signal });
  }

  /** Send one dead letter again (same webhook-id, a fresh schedule); how many were replayed (1). */
  async replay(id, { signal } = {}) {
    return (await this.transport.request("POST", `${deadLetterPath(id)}/replay`, { signal })).replayed;
  }

  /**
   * Replay every dead letter that matches; `dryRun: true` only counts them. `dryRun` must be said: a forgotten
   * filter must not replay everything there is.
   */
  replayBulk({ dryRun, reason, tenant, since, until, signal } = {}) {
    if (typeof dryRun !== "boolean") throw new TypeError("replayBulk needs dryRun: true (count) or false (replay)");
    const body = { dry_run: dryRun };
    if (reason) body.reason = reason;
    if (tenant) body.tenant = tenant;
    if (since) body.since = since instanceof Date ? since.toISOString() : since;
    if (until) body.until = until instanceof Date ? until.toISOString() : until;
    return this.transport.request("POST", "/v1/dead-letters/replay", { body, signal });
  }

  async delete(id, { signal } = {}) {
    await this.transport.request("DELETE", deadLetterPath(id), { signal });
  }
}

class Destinations {
  constructor(transport) {
    this.transport = transport;
  }

  /** Destinations, worst first (open, paused, degraded, healthy; then most owed), every page followed. */
  list({ state, tenant, pageSize = DEFAULT_PAGE_SIZE, signal } = {}) {
    return new Pager(this.transport, "/v1/destinations", { state, tenant, limit: pageSize }, undefined, signal);
  }

  get(id, { signal } = {}) {
    return this.transport.request("GET", destinationPath(id), { retry: true, signal });
  }

  /** Hold every webhook of the destination (none sent, none dead-lettered) until resume. */
  pause(id, { signal } = {}) {
    return this.transport.request("POST", `${destinationPath(id)}/pause`, { signal });
  }

  resume(id, { signal } = {}) {
    return this.transport.request("POST", `${destinationPath(id)}/resume`, { signal });
  }

  /** Change its caps: `maxInFlight` (1..1000), `ratePerS` (a number, or null to remove the rate); left out: kept. */
  update(id, { maxInFlight, ratePerS, signal } = {}) {
    const body = {};
    if (maxInFlight !== undefined) body.max_in_flight = maxInFlight;
    if (ratePerS !== undefined) body.rate_per_s = ratePerS;
    return this.transport.request("PATCH", destinationPath(id), { body, signal });
  }
}

class SigningSecrets {
  constructor(transport) {
    this.transport = transport;
  }

  /** The secret that signs this tenant's webhooks, `whsec_…`. */
  async get({ signal } = {}) {
    return (await this.transport.request("GET", "/v1/signing-secret", { retry: true, signal })).secret;
  }

  /** A new secret, from now on the one get() returns; the old one keeps signing beside it for 24 h. */
  async rotate({ signal } = {}) {
    return (await this.transport.request("POST", "/v1/signing-secret/rotate", { signal })).secret;
  }
}

/** What an admin token may do beyond every tenant's things. */
class Ops {
  constructor(transport) {
    this.transport = transport;
  }

  /** The secret that signs operational events (destination.opened, destination.recovered). */
  async signingSecret({ signal } = {}) {
    return (await this.transport.request("GET", "/v1/ops/signing-secret", { retry: true, signal })).secret;
  }

  /** The storage's nodes, how Relay's partitions sit on them, the work owed on each, the processes alive. */
  cluster({ signal } = {}) {
    return this.transport.request("GET", "/v1/ops/cluster", { retry: true, signal });
  }

  /** Acknowledge that the store lost its data, so that /ready may answer 200 again; false when it had not. */
  async acknowledgeStoreLoss({ signal } = {}) {
    return (await this.transport.request("POST", "/v1/ops/store/acknowledge", { signal })).acknowledged;
  }
}

function taskPath(taskId) {
  return `/v1/tasks/${encodeURIComponent(required(taskId, "task id"))}`;
}

function deadLetterPath(id) {
  return `/v1/dead-letters/${encodeURIComponent(required(id, "dead letter id"))}`;
}

function destinationPath(id) {
  return `/v1/destinations/${encodeURIComponent(required(id, "destination id"))}`;
}

function required(value, what) {
  if (typeof value !== "string" || value === "") throw new TypeError(`a ${what} is needed`);
  return value;
}
