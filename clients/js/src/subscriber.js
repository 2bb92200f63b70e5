// Relay's browser client: follow tasks over one WebSocket, get each event once and in order, survive drops.
// This file is @relay/client's `subscriber` (clients/js/src/subscriber.js) and the API serves it as /static/relay.js
// (service/api/static/relay.js links to it; a wheel carries its content): no build step, one source.
//
//   import { RelayClient } from "/static/relay.js"; // or from "@relay/client/subscriber"
//   const relay = new RelayClient(location.origin);
//   relay.subscribe(task.id, task.ws_token, { onEvent(event) { ... }, onStatus(status) { ... } });
//
// onEvent(event) gets every Event of the task exactly once, in seq order; the event is acked when it returns
// (an event whose handler throws is not acked, so its webhook, if any, still goes out). onStatus(status) gets
// plain objects with a `type` and a human `text`: the connection's "connecting" | "open" | "closed" |
// "reconnecting" (with `delayMs`), and the task's "subscribed" | "recovered" (with `task`) | "error".
// Connection statuses also carry `channel`: "websocket", or "sse" once the client has fallen back.
//
// When no WebSocket can be opened at all (the constructor throws, or the socket closes before it ever opened, as
// behind a proxy that blocks them), the client says so with a "fallback" status and follows each task over
// Server-Sent Events instead (GET /v1/tasks/{id}/stream, one streamed fetch per task): the same events, once and in
// order, resumed from the same seq. A stream cannot ack, so over it a task's webhook, if any, always goes out.
// A stream that stays silent for ping interval + timeout (the server writes at least a comment line more often)
// counts as dead and is opened again, as a silent socket is. Meanwhile the client tries a WebSocket again now and
// then (a quiet probe, 5 s doubling to 60 s, with jitter); once one opens, it follows every task over it again and
// closes the streams (an "open" status with channel "websocket" says so).

const DEFAULTS = {
  pingIntervalMs: 20_000, // RELAY_WS_PING_INTERVAL on the server
  pingTimeoutMs: 20_000, // RELAY_WS_PING_TIMEOUT on the server
  backoffBaseMs: 500,
  backoffMaxMs: 20_000,
  healthyAfterMs: 5_000, // a connection open this long resets the backoff
  probeBaseMs: 5_000, // over Server-Sent Events: the first wait before trying a WebSocket again, doubling
  probeMaxMs: 60_000, // ... up to this
  onStatus: null, // receives every status, of the connection and of every task
};

const SEQ_KEY = (taskId) => `relay:seq:${taskId}`;
// The event types a stream names (a stream's other messages are not events).
const EVENT_TYPES = ["task.progress", "task.retrying", "task.completed", "task.failed", "task.cancelled"];
// A final event's data says how the task ended.
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
// Errors after which a subscription is over: a refused subscribe (unknown task or wrong token), a store that lost its data.
const FINAL_ERRORS = new Set(["forbidden", "store_lost"]);

export class RelayClient {
  constructor(baseUrl = location.origin, options = {}) {
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.wsUrl = this.baseUrl.replace(/^http/, "ws") + "/v1/ws"; // http -> ws, https -> wss
    this.options = { ...DEFAULTS, ...options };
    this.subs = new Map(); // taskId -> {token, onEvent, onStatus, lastSeq, sentAfter, jumpAllowed, resyncing}
    this.socket = null;
    this.attempt = 0; // failed connections in a row, for the backoff
    this.openedAt = 0;
    this.retryTimer = null;
    this.deadTimer = null;
    this.closed = false;
    this.channel = "websocket"; // "sse" once no WebSocket could be opened
    this.everOpened = false; // a WebSocket of this client has opened: the network lets them through
    this.streams = new Map(); // taskId -> {controller, timer, silentTimer, attempt, openedAt}, over SSE
    this.probeTimer = null; // the next try of a WebSocket while on SSE
    this.probeAttempt = 0;
  }

  /** Follow a task from where this tab last saw it (sessionStorage), or from its first event. */
  subscribe(taskId, token, { onEvent = () => {}, onStatus = () => {} } = {}) {
    const known = this.subs.get(taskId);
    const lastSeq = Math.max(known ? known.lastSeq : 0, loadSeq(taskId));
    const sub = { token, onEvent, onStatus, lastSeq, sentAfter: lastSeq, jumpAllowed: false, resyncing: false };
    this.subs.set(taskId, sub);
    this.closed = false;
    if (this.channel === "sse") {
      this.openStream(taskId);
      if (!this.probeTimer) this.scheduleProbe();
    } else if (this.isOpen()) this.sendSubscribe(taskId, sub);
    else if (!this.socket && !this.retryTimer) this.connect();
  }

  unsubscribe(taskId) {
    if (!this.subs.delete(taskId)) return;
    this.closeStream(taskId);
    if (this.isOpen()) this.send({ type: "unsubscribe", task_id: taskId });
  }

  /** Stop for good: no reconnect until the next subscribe(). */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearTimeout(this.probeTimer);
    this.probeTimer = null;
    for (const taskId of [...this.streams.keys()]) this.closeStream(taskId);
    this.drop(1000, "closed by the page");
  }

  /** Demo aid: lose the connection as a network drop would, so the client reconnects and resumes. */
  dropConnection() {
    if (this.channel === "sse") {
      for (const [taskId, stream] of this.streams) {
        stopStream(stream);
        this.taskStatus(taskId, { type: "closed", channel: "sse", text: "event stream closed (dropped by the page)" });
        this.streamLost(taskId, "dropped by the page");
      }
      return;
    }
    this.drop(4000, "dropped by the page");
  }

  /** The last seq this client handed to onEvent for the task (0: none yet). */
  lastSeq(taskId) {
    return this.subs.get(taskId)?.lastSeq ?? loadSeq(taskId);
  }

  isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  // The connection.

  connect() {
    this.retryTimer = null;
    if (this.closed) return;
    this.status({ type: "connecting", channel: "websocket", text: `connecting to ${this.wsUrl}` });
    let socket;
    try {
      socket = new WebSocket(this.wsUrl);
    } catch (error) {
      this.fallBack(`the WebSocket could not be made (${error.message || error})`);
      return;
    }
    this.socket = socket;
    this.armDeadTimer(); // a connect that hangs counts as dead too
    socket.onopen = () => {
      this.openedAt = Date.now();
      this.everOpened = true;
      this.status({ type: "open", channel: "websocket", text: "connected" });
      this.armDeadTimer();
      for (const [taskId, sub] of this.subs) this.sendSubscribe(taskId, sub);
    };
    this.listen(socket);
  }

  listen(socket) {
    socket.onmessage = (message) => {
      this.armDeadTimer();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return; // not ours to crash on; the server only sends JSON
      }
      this.handle(frame);
    };
    socket.onclose = (close) => this.lost(socket, close.code, close.reason);
  }

  // Forget the socket at once (its late frames are ignored), close it, and reconnect unless closed.
  drop(code, reason) {
    const socket = this.socket;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    try {
      socket.close(code, reason);
    } catch {
      // already closing
    }
    this.lost(socket, code, reason);
  }

  lost(socket, code, reason) {
    if (socket !== this.socket) return;
    this.socket = null;
    clearTimeout(this.deadTimer);
    const opened = this.openedAt > 0;
    const healthy = opened && Date.now() - this.openedAt >= this.options.healthyAfterMs;
    this.openedAt = 0;
    if (healthy) this.attempt = 0;
    const text = `connection closed (${code}${reason ? `: ${reason}` : ""})`;
    this.status({ type: "closed", channel: "websocket", code, reason, text });
    // With nothing to follow there is nothing to resume (the server closes such sockets); subscribe() reconnects.
    if (this.closed || this.subs.size === 0) return;
    if (!opened && !this.everOpened) {
      // Not one socket has opened: something on the way refuses WebSockets. Streams pass where plain HTTP does.
      this.fallBack(`the WebSocket closed before it opened (${code})`);
      return;
    }
    // Full jitter: anywhere between 0 and the capped exponential step, so clients do not reconnect in herds.
    const capMs = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** this.attempt);
    const delayMs = Math.round(Math.random() * capMs);
    this.attempt += 1;
    const next = `reconnecting in ${delayMs} ms`;
    this.status({ type: "reconnecting", channel: "websocket", delayMs, attempt: this.attempt, text: next });
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  // Server-Sent Events, when no WebSocket can be opened.

  fallBack(why) {
    clearTimeout(this.deadTimer);
    this.socket = null;
    this.channel = "sse";
    this.status({ type: "fallback", channel: "sse", text: `${why}; following over Server-Sent Events` });
    for (const taskId of this.subs.keys()) this.openStream(taskId);
    this.probeAttempt = 0;
    this.scheduleProbe();
  }

  // While on SSE: try a WebSocket again after a while (the proxy that refused one may have gone), quietly.
  scheduleProbe() {
    clearTimeout(this.probeTimer);
    const capMs = Math.min(this.options.probeMaxMs, this.options.probeBaseMs * 2 ** this.probeAttempt);
    this.probeAttempt += 1;
    this.probeTimer = setTimeout(() => this.probe(), Math.round(capMs / 2 + (Math.random() * capMs) / 2));
  }

  probe() {
    this.probeTimer = null;
    if (this.closed || this.channel !== "sse" || this.subs.size === 0) return; // subscribe() schedules the next
    let socket;
    try {
      socket = new WebSocket(this.wsUrl);
    } catch {
      this.scheduleProbe();
      return;
    }
    const silentMs = this.options.pingIntervalMs + this.options.pingTimeoutMs;
    const giveUp = setTimeout(() => socket.onclose?.({ code: 4001, reason: "no answer" }), silentMs);
    socket.onclose = () => {
      clearTimeout(giveUp);
      socket.onopen = socket.onclose = null;
      try {
        socket.close();
      } catch {
        // already closed
      }
      if (!this.closed && this.channel === "sse") this.scheduleProbe();
    };
    socket.onopen = () => {
      clearTimeout(giveUp);
      socket.onopen = null;
      if (this.closed || this.channel !== "sse" || this.subs.size === 0) {
        socket.onclose = null;
        socket.close(1000, "not needed");
        return;
      }
      this.backToWebSocket(socket);
    };
  }

  // A WebSocket opened again: follow every task over it, from the last seq each stream gave, and close the streams.
  backToWebSocket(socket) {
    for (const taskId of [...this.streams.keys()]) this.closeStream(taskId);
    this.channel = "websocket";
    this.probeAttempt = 0;
    this.attempt = 0;
    this.socket = socket;
    this.openedAt = Date.now();
    this.everOpened = true;
    this.listen(socket);
    this.status({
      type: "open",
      channel: "websocket",
      text: "connected: a WebSocket opens again, so no more Server-Sent Events",
    });
    this.armDeadTimer();
    for (const [taskId, sub] of this.subs) this.sendSubscribe(taskId, sub);
  }

  streamUrl(taskId, sub) {
    const query = new URLSearchParams({ token: sub.token, after_seq: String(sub.lastSeq) });
    return `${this.baseUrl}/v1/tasks/${encodeURIComponent(taskId)}/stream?${query}`;
  }

  openStream(taskId) {
    const sub = this.subs.get(taskId);
    if (!sub || this.closed) return;
    const known = this.streams.get(taskId);
    this.closeStream(taskId);
    const stream = {
      controller: new AbortController(),
      timer: null,
      silentTimer: null,
      attempt: known ? known.attempt : 0,
      openedAt: 0,
    };
    this.streams.set(taskId, stream);
    sub.sentAfter = sub.lastSeq;
    sub.resyncing = false;
    this.taskStatus(taskId, { type: "connecting", channel: "sse", text: `opening the event stream of ${taskId}` });
    this.readStream(taskId, stream, sub);
  }

  // A streamed fetch rather than EventSource: it sees the server's comment lines too, so a silent stream is noticed.
  async readStream(taskId, stream, sub) {
    const current = () => this.streams.get(taskId) === stream;
    let response;
    try {
      this.armSilentTimer(taskId, stream); // a connect that hangs counts as silent too
      const headers = { Accept: "text/event-stream" };
      if (sub.lastSeq > 0) headers["Last-Event-ID"] = String(sub.lastSeq); // past a task's end: a 204, no stream
      response = await fetch(this.streamUrl(taskId, sub), {
        headers,
        cache: "no-store",
        signal: stream.controller.signal,
      });
    } catch (error) {
      if (current() && !stream.controller.signal.aborted) {
        this.streamLost(taskId, `the event stream could not be opened (${error.message || error})`);
      }
      return;
    }
    if (!current()) return;
    if (response.status === 204) {
      // The API has nothing after our last seq and the task has ended: we have its final event.
      this.closeStream(taskId);
      this.taskStatus(taskId, { type: "closed", channel: "sse", text: "the task ended; stream closed" });
      return;
    }
    if (!response.ok || !response.body) {
      stopStream(stream);
      this.streamLost(taskId, `the event stream was refused (${response.status})`);
      return;
    }
    stream.openedAt = Date.now();
    this.taskStatus(taskId, { type: "open", channel: "sse", text: "connected (Server-Sent Events)" });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (!current()) return;
        if (done) break;
        this.armSilentTimer(taskId, stream); // any bytes, a comment line included, say the stream is alive
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          this.streamMessage(taskId, stream, block);
          if (!current()) return; // its final event closed it
        }
      }
    } catch (error) {
      if (!current() || stream.controller.signal.aborted) return; // closed, or given up on by the page or the timer
      stopStream(stream);
      this.streamLost(taskId, `event stream dropped (${error.message || error})`);
      return;
    }
    // Ended before the task's final event (an API that restarted, a reader too far behind): resume from lastSeq.
    stopStream(stream);
    this.streamLost(taskId, "event stream ended");
  }

  // One message of a stream: its `event:` name and `data:` lines (comment lines, starting with ':', say nothing).
  streamMessage(taskId, stream, block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return;
    const payload = parse(data.join("\n"));
    if (!payload) return;
    const sub = this.subs.get(taskId);
    if (!sub) return;
    if (name === "subscribed") {
      sub.sentAfter = sub.lastSeq;
      this.subscribed(payload);
      if (ENDED.has(payload.status) && payload.last_seq <= sub.lastSeq) {
        this.closeStream(taskId); // the task has ended and this client has its every event: nothing will come
        this.taskStatus(taskId, { type: "closed", channel: "sse", text: "the task ended; stream closed" });
      }
    } else if (name === "error") {
      this.error({ ...payload, task_id: taskId });
      this.closeStream(taskId); // the server has ended the stream; store_lost (the task is gone) is final
    } else if (EVENT_TYPES.includes(name)) {
      this.deliver(payload);
      if (ENDED.has(payload.data?.status) && payload.seq <= (this.subs.get(taskId)?.lastSeq ?? Infinity)) {
        this.closeStream(taskId); // its final event: the server ends the stream too
        this.taskStatus(taskId, { type: "closed", channel: "sse", text: "the task ended; stream closed" });
      }
    }
  }

  // No byte for ping interval + timeout (the server writes at least every 15 s): the path is dead, as for a socket.
  armSilentTimer(taskId, stream) {
    clearTimeout(stream.silentTimer);
    const silentMs = this.options.pingIntervalMs + this.options.pingTimeoutMs;
    stream.silentTimer = setTimeout(() => {
      if (this.streams.get(taskId) !== stream) return;
      stopStream(stream);
      this.taskStatus(taskId, { type: "closed", channel: "sse", text: `event stream silent for ${silentMs} ms` });
      this.streamLost(taskId, `no data for ${silentMs} ms`);
    }, silentMs);
  }

  // A stream failed, ended early or went silent (the API restarting, Redis away, or a task it may not follow).
  async streamLost(taskId, why) {
    const sub = this.subs.get(taskId);
    if (!sub || this.closed) return;
    const stream = this.streams.get(taskId);
    if (!stream) return;
    if (stream.openedAt && Date.now() - stream.openedAt >= this.options.healthyAfterMs) stream.attempt = 0;
    try {
      const response = await fetch(`${this.baseUrl}/v1/tasks/${encodeURIComponent(taskId)}`, {
        headers: { Authorization: `Bearer ${sub.token}` },
        // On a dead path this would wait for minutes: no answer in the silence bound, and the stream is tried again.
        signal: AbortSignal.timeout(this.options.pingIntervalMs + this.options.pingTimeoutMs),
      });
      if (response.status === 401 || response.status === 404) {
        const message = "unknown task, or a token that is not this task's";
        this.taskStatus(taskId, {
          type: "error",
          code: "forbidden",
          message,
          text: `server error forbidden: ${message}`,
        });
        this.subs.delete(taskId);
        this.streams.delete(taskId);
        return;
      }
    } catch {
      // unreachable for now: try the stream again below
    }
    if (this.streams.get(taskId) !== stream || !this.subs.has(taskId)) return;
    const capMs = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** stream.attempt);
    const delayMs = Math.round(Math.random() * capMs);
    stream.attempt += 1;
    const text = `${why}; reconnecting in ${delayMs} ms`;
    this.taskStatus(taskId, { type: "reconnecting", channel: "sse", delayMs, attempt: stream.attempt, text });
    stream.timer = setTimeout(() => this.openStream(taskId), delayMs);
  }

  closeStream(taskId) {
    const stream = this.streams.get(taskId);
    if (!stream) return;
    clearTimeout(stream.timer);
    stopStream(stream);
    this.streams.delete(taskId);
  }

  // The server pings every interval; nothing at all for interval + timeout means the path is dead
  // (a dead peer often never sends a close, and the browser may not notice for minutes).
  armDeadTimer() {
    clearTimeout(this.deadTimer);
    const silentMs = this.options.pingIntervalMs + this.options.pingTimeoutMs;
    this.deadTimer = setTimeout(() => this.drop(4001, `no frame for ${silentMs} ms`), silentMs);
  }

  send(frame) {
    if (this.isOpen()) this.socket.send(JSON.stringify(frame));
  }

  sendSubscribe(taskId, sub) {
    sub.sentAfter = sub.lastSeq;
    sub.resyncing = false;
    this.send({ type: "subscribe", task_id: taskId, token: sub.token, after_seq: sub.lastSeq });
  }

  // Frames.

  handle(frame) {
    switch (frame.type) {
      case "ping":
        this.send({ type: "pong" });
        break;
      case "event":
        this.deliver(frame.event);
        break;
      case "subscribed":
        this.subscribed(frame);
        break;
      case "error":
        this.error(frame);
        break;
    }
  }

  deliver(event) {
    const sub = this.subs.get(event.task_id);
    if (!sub) return;
    if (event.seq <= sub.lastSeq) {
      // Seen already (sent again after a reconnect): ack it again, the first ack may have died with a socket.
      this.send({ type: "ack", event_id: event.id });
      return;
    }
    if (event.seq !== sub.lastSeq + 1 && !sub.jumpAllowed) {
      // A gap should never happen; if it does, ask again from what we have rather than deliver out of order
      // (unsubscribed first: a subscribe to a task the socket follows already replays nothing).
      if (!sub.resyncing) {
        if (this.channel === "sse") this.openStream(event.task_id);
        else {
          this.send({ type: "unsubscribe", task_id: event.task_id });
          this.sendSubscribe(event.task_id, sub);
        }
        sub.resyncing = true;
      }
      return;
    }
    sub.jumpAllowed = false;
    sub.lastSeq = event.seq;
    saveSeq(event.task_id, event.seq);
    try {
      sub.onEvent(event);
    } catch (error) {
      console.error("relay: onEvent threw; the event is not acked", error);
      return;
    }
    this.send({ type: "ack", event_id: event.id });
  }

  subscribed(frame) {
    const sub = this.subs.get(frame.task_id);
    if (!sub) return;
    sub.resyncing = false;
    // Events the server no longer retains cannot be replayed: the next one may skip ahead.
    sub.jumpAllowed = !frame.recovered;
    const resumed = sub.sentAfter > 0 ? `, resuming after seq ${sub.sentAfter}` : "";
    this.taskStatus(frame.task_id, {
      type: "subscribed",
      status: frame.status,
      lastSeq: frame.last_seq,
      afterSeq: sub.sentAfter,
      recovered: frame.recovered,
      text: `subscribed (task ${frame.status}, server at seq ${frame.last_seq}${resumed})`,
    });
    if (!frame.recovered) this.recover(frame.task_id, sub);
  }

  // Some events are gone from the server's log: read the task itself, so the page learns how it ended.
  async recover(taskId, sub) {
    try {
      const response = await fetch(`${this.baseUrl}/v1/tasks/${encodeURIComponent(taskId)}`, {
        headers: { Authorization: `Bearer ${sub.token}` },
      });
      if (!response.ok) throw new Error(`GET /v1/tasks/${taskId} answered ${response.status}`);
      const task = await response.json();
      this.taskStatus(taskId, { type: "recovered", task, text: `some events expired; the task is ${task.status}` });
    } catch (error) {
      this.taskStatus(taskId, { type: "error", code: "recover_failed", message: String(error), text: String(error) });
    }
  }

  error(frame) {
    const text = `server error ${frame.code}: ${frame.message}`;
    const status = { type: "error", code: frame.code, message: frame.message, text };
    if (frame.task_id && this.subs.has(frame.task_id)) {
      this.taskStatus(frame.task_id, status);
      // A refused subscribe is final (unknown task or wrong token): do not send it again on every reconnect.
      // So is a store that lost its data: the task is gone with it.
      if (FINAL_ERRORS.has(frame.code)) this.unsubscribe(frame.task_id);
    } else {
      this.status(status);
      if (frame.code === "store_lost") for (const taskId of [...this.subs.keys()]) this.unsubscribe(taskId);
    }
  }

  // Status reports.

  status(status) {
    for (const [taskId, sub] of this.subs) safely(sub.onStatus, { ...status, taskId });
    if (this.options.onStatus) safely(this.options.onStatus, status);
  }

  taskStatus(taskId, status) {
    const sub = this.subs.get(taskId);
    const report = { ...status, taskId };
    if (sub) safely(sub.onStatus, report);
    if (this.options.onStatus) safely(this.options.onStatus, report);
  }
}

function stopStream(stream) {
  clearTimeout(stream.silentTimer);
  stream.silentTimer = null;
  stream.controller.abort();
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null; // not ours to crash on; the server only sends JSON
  }
}

function safely(callback, value) {
  try {
    callback(value);
  } catch (error) {
    console.error("relay: onStatus threw", error);
  }
}

// sessionStorage can be missing or refuse (sandboxed frames, storage full): then resume works within the page only.
function loadSeq(taskId) {
  try {
    return Number.parseInt(sessionStorage.getItem(SEQ_KEY(taskId)) ?? "0", 10) || 0;
  } catch {
    return 0;
  }
}

function saveSeq(taskId, seq) {
  try {
    sessionStorage.setItem(SEQ_KEY(taskId), String(seq));
  } catch {
    // see loadSeq
  }
}
