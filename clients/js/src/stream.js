// A task's events over Server-Sent Events (GET /v1/tasks/{id}/stream), read with fetch so that it runs alike in Node,
// browsers and edge runtimes, and so that a stream that goes silent is noticed (EventSource hides comment lines).
//
// Each event is yielded once, in seq order, up to the task's final event. A stream that drops (the API restarted, a
// proxy cut it, it went silent for longer than the server's keepalive allows) is opened again with Last-Event-ID set
// to the last seq yielded, so nothing is lost; an event sent again after a resume is not yielded twice.

import { StreamError, TransportError, UnavailableError, RateLimitedError, UnexpectedAnswerError } from "./errors.js";
import { MAX_ERROR_BYTES, apiError, readText, sleep } from "./http.js";

// Seconds without a byte after which a stream counts as dead (the server writes a comment at least every 15 s).
export const DEFAULT_IDLE_TIMEOUT_S = 45;
// A stream open this long before it dropped was healthy: the next reconnect starts the backoff over.
const HEALTHY_AFTER_S = 5;

const FINAL_TYPES = new Set(["task.completed", "task.failed", "task.cancelled"]);
// The statuses of a task that has ended (client.js reads them too).
export const ENDED = new Set(["succeeded", "failed", "cancelled"]);

/**
 * The events of a task after `afterSeq`, live, up to its final event.
 *
 * @param {import("./http.js").Transport} transport
 * @param {string} taskId
 * @param {{afterSeq?: number, signal?: AbortSignal, idleTimeout?: number, onSubscribed?: (frame: object) => void}} [options]
 */
export async function* streamEvents(transport, taskId, options = {}) {
  const { afterSeq = 0, signal, idleTimeout = DEFAULT_IDLE_TIMEOUT_S, onSubscribed } = options;
  let lastSeq = afterSeq;
  let failures = 0; // drops and refusals in a row; a stream that delivered or lasted starts counting again
  const path = `/v1/tasks/${encodeURIComponent(taskId)}/stream`;
  for (;;) {
    signal?.throwIfAborted();
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let idle = null;
    const armIdle = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(new TransportError(`no data for ${idleTimeout} s`)), idleTimeout * 1000);
    };
    let why;
    let openedAt = null;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastSeq > 0) headers["Last-Event-ID"] = String(lastSeq);
      let response;
      try {
        response = await transport.open(path, { headers, signal: controller.signal });
      } catch (error) {
        if (!(error instanceof TransportError)) throw error;
        why = error;
      }
      if (response !== undefined) {
        if (response.status === 204) return; // the task has ended and its final event is ours already
        if (!response.ok) {
          const text = await readText(response, MAX_ERROR_BYTES, true, `GET ${path}`).catch(() => "");
          const error = apiError(response, text, "GET", path);
          if (!(error instanceof UnavailableError || error instanceof RateLimitedError)) throw error;
          why = error;
        } else {
          openedAt = Date.now();
          armIdle();
          try {
            const limitBytes = transport.maxAnswerBytes;
            for await (const message of messages(response.body, armIdle, controller.signal, limitBytes)) {
              if (message.event === "subscribed") {
                const frame = parseJson(message.data, taskId);
                onSubscribed?.(frame);
                if (ENDED.has(frame.status) && frame.last_seq <= lastSeq) return; // nothing more will come
              } else if (message.event === "error") {
                const { code = "error", message: text = message.data } = safeParse(message.data) ?? {};
                throw new StreamError(code, text);
              } else if (message.data) {
                const event = parseJson(message.data, taskId);
                if (typeof event.seq !== "number" || event.seq <= lastSeq) continue; // had it before the drop
                lastSeq = event.seq;
                failures = 0;
                clearTimeout(idle); // the time the consumer takes is not the stream's silence
                yield event;
                if (FINAL_TYPES.has(event.type)) return;
                armIdle();
              }
            }
            if (signal?.aborted) throw signal.reason;
            const silent = controller.signal.aborted && controller.signal.reason instanceof TransportError;
            why = silent
              ? controller.signal.reason
              : new TransportError("the stream ended before the task's final event");
          } catch (error) {
            if (signal?.aborted) throw signal.reason;
            if (error instanceof StreamError || error instanceof UnexpectedAnswerError) throw error;
            if (controller.signal.aborted && controller.signal.reason instanceof TransportError) {
              why = controller.signal.reason; // went silent
            } else {
              why = new TransportError(`the stream dropped: ${error?.message ?? error}`, { cause: error });
            }
          }
        }
      }
    } finally {
      clearTimeout(idle);
      signal?.removeEventListener("abort", onAbort);
      controller.abort(); // closes the connection when the consumer stopped early, or the stream ended
    }
    if (openedAt !== null && Date.now() - openedAt >= HEALTHY_AFTER_S * 1000) failures = 0;
    if (failures >= transport.maxRetries) throw why;
    const waitS = transport.backoffS(failures, why?.retryAfterS ?? null);
    if (waitS === null) throw why;
    failures += 1;
    await sleep(waitS, signal);
  }
}

/**
 * The messages of an event stream's body: `{event, data, id}`, comments left out (each chunk re-arms `alive`).
 * An abort of `signal` ends them, even from a fetch that does not tie its body to the signal. A line or a message
 * longer than `limitBytes` (characters, here) is an UnexpectedAnswerError: an endless line or endless data lines
 * would otherwise be kept until memory runs out.
 */
async function* messages(body, alive, signal, limitBytes) {
  const reader = body.getReader();
  const stop = () => reader.cancel(signal.reason).catch(() => {});
  signal.addEventListener("abort", stop, { once: true });
  const decoder = new TextDecoder();
  // The unfinished line as pieces, each chunk searched once: joining them on every chunk would copy a long line
  // again and again.
  let pieces = [];
  let piecesLength = 0;
  let afterCR = false; // the last chunk ended with \r: a \n that starts the next one is the same line break
  let event = "message";
  let data = [];
  let dataLength = 0;
  let id = null;
  const tooLong = (what) =>
    new UnexpectedAnswerError(`the event stream sent ${what} longer than ${limitBytes} (maxAnswerBytes)`);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      alive();
      const text = decoder.decode(value, { stream: true });
      let start = afterCR && text.startsWith("\n") ? 1 : 0;
      afterCR = false;
      for (;;) {
        const end = lineBreak(text, start);
        if (end < 0) break;
        pieces.push(text.slice(start, end));
        const line = pieces.length === 1 ? pieces[0] : pieces.join("");
        pieces = [];
        piecesLength = 0;
        if (text[end] === "\r" && end === text.length - 1) afterCR = true;
        start = end + (text.startsWith("\r\n", end) ? 2 : 1);
        if (line === "") {
          if (data.length > 0) yield { event, data: data.join("\n"), id };
          event = "message";
          data = [];
          dataLength = 0;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const fieldValue = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = fieldValue;
        else if (field === "data") {
          data.push(fieldValue);
          dataLength += fieldValue.length + 1;
          if (dataLength > limitBytes) throw tooLong("an event");
        } else if (field === "id") id = fieldValue;
      }
      if (start < text.length) {
        pieces.push(text.slice(start));
        piecesLength += text.length - start;
        if (piecesLength > limitBytes) throw tooLong("a line");
      }
    }
  } finally {
    signal.removeEventListener("abort", stop);
    reader.cancel().catch(() => {});
  }
}

/** The index of the first \r or \n in `text` from `from`, or -1. */
function lineBreak(text, from) {
  for (let i = from; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code === 10 || code === 13) return i;
  }
  return -1;
}

function parseJson(text, taskId) {
  try {
    return JSON.parse(text);
  } catch {
    throw new UnexpectedAnswerError(`the stream of task ${taskId} sent data that is not JSON: ${text.slice(0, 200)}`);
  }
}

function safeParse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
