// Which requests are retried, with which Idempotency-Key and after how long; a stream's resume; against a fetch of
// the test's own (no Relay needed).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ConflictError,
  NotFoundError,
  RateLimitedError,
  Relay,
  RequestTimeoutError,
  UnavailableError,
  UnexpectedAnswerError,
} from "../src/index.js";

const TASK = { id: "task_x", kind: "echo", status: "queued", input: null, created_at: "2026-12-07T00:00:00Z" };

/** A fetch that answers from `script` in turn (a function is called with the request; an Error is thrown). */
function scripted(...script) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url: String(url), method: init.method, headers: init.headers, at: Date.now() });
    const next = script.length > 1 ? script.shift() : script[0];
    const answer = typeof next === "function" ? await next(url, init) : next;
    if (answer instanceof Error) throw answer;
    return answer instanceof Response ? answer.clone() : answer; // the script's own copy stays unread
  };
  return { fetch, calls };
}

const json = (status, body, headers = {}) =>
  new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
const fast = { retryBaseDelay: 0.001, retryMaxDelay: 2 };

test("a submission is retried on no answer, 429 and 503, with one Idempotency-Key", async () => {
  const { fetch, calls } = scripted(
    new TypeError("fetch failed"),
    json(503, { detail: "store away" }, { "retry-after": "0" }),
    json(429, { detail: "slow down" }, { "retry-after": "0" }),
    json(202, TASK),
  );
  const relay = new Relay("http://relay.test", "key", { fetch, ...fast });
  const task = await relay.tasks.submit("echo", null);
  assert.equal(task.id, "task_x");
  assert.equal(calls.length, 4);
  const keys = calls.map((call) => call.headers["Idempotency-Key"]);
  assert.match(keys[0], /^[0-9a-f-]{36}$/);
  assert.deepEqual(new Set(keys).size, 1, "a retry carried another key");
  assert.equal(calls[0].headers.Authorization, "Bearer key");

  // The next call makes a key of its own; a caller's key is used as given.
  const again = scripted(json(202, TASK));
  await new Relay("http://relay.test", "key", { fetch: again.fetch }).tasks.submit("echo", null);
  assert.notEqual(again.calls[0].headers["Idempotency-Key"], keys[0]);
  const own = scripted(json(202, TASK));
  await new Relay("http://relay.test", "key", { fetch: own.fetch }).tasks.submit("echo", null, {
    idempotencyKey: "k1",
  });
  assert.equal(own.calls[0].headers["Idempotency-Key"], "k1");
});

test("reads are retried; other writes and other errors are not", async () => {
  const read = scripted(json(503, { detail: "away" }), json(200, TASK));
  assert.equal(
    (await new Relay("http://relay.test", "key", { fetch: read.fetch, ...fast }).tasks.get("task_x")).id,
    "task_x",
  );
  assert.equal(read.calls.length, 2);

  const cancel = scripted(json(503, { detail: "away" }), json(202, TASK));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch: cancel.fetch, ...fast }).tasks.cancel("task_x"),
    UnavailableError,
  );
  assert.equal(cancel.calls.length, 1);

  const replay = scripted(new TypeError("fetch failed"), json(202, { matched: 1, replayed: 1 }));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch: replay.fetch, ...fast }).deadLetters.replayBulk({ dryRun: false }),
    (error) => error.name === "TransportError",
  );
  assert.equal(replay.calls.length, 1);

  const missing = scripted(json(404, { status_code: 404, detail: "no task task_x" }));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch: missing.fetch, ...fast }).tasks.get("task_x"),
    NotFoundError,
  );
  assert.equal(missing.calls.length, 1);

  const conflict = scripted(json(409, { detail: "ended" }), json(202, TASK));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch: conflict.fetch, ...fast }).tasks.submit("echo"),
    ConflictError,
  );
  assert.equal(conflict.calls.length, 1);
});

test("Retry-After is waited for; one longer than the longest wait is the caller's to see", async () => {
  const waited = scripted(json(503, { detail: "away" }, { "retry-after": "1" }), json(202, TASK));
  const started = Date.now();
  await new Relay("http://relay.test", "key", { fetch: waited.fetch, ...fast }).tasks.submit("echo");
  assert.ok(waited.calls[1].at - waited.calls[0].at >= 990, "retried before Retry-After");
  assert.ok(Date.now() - started < 3000);

  const long = scripted(json(429, { detail: "later" }, { "retry-after": "3600" }), json(202, TASK));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch: long.fetch, ...fast }).tasks.submit("echo"),
    (error) => {
      assert.ok(error instanceof RateLimitedError);
      assert.equal(error.retryAfterS, 3600);
      return true;
    },
  );
  assert.equal(long.calls.length, 1);
});

test("retries stop after maxRetries, and the last error is thrown", async () => {
  const { fetch, calls } = scripted(json(503, { detail: "still away" }));
  await assert.rejects(
    new Relay("http://relay.test", "key", { fetch, ...fast, maxRetries: 3 }).tasks.get("task_x"),
    /still away/,
  );
  assert.equal(calls.length, 4);
});

test("backoff doubles from its base, with jitter of half to all of it, up to its ceiling", async () => {
  const relay = (random) =>
    new Relay("http://relay.test", "key", { fetch: () => {}, retryBaseDelay: 0.5, retryMaxDelay: 4, random });
  const low = relay(() => 0).transport;
  const high = relay(() => 0.999999).transport;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5].map((n) => low.backoffS(n, null)),
    [0.25, 0.5, 1, 2, 2, 2],
  );
  assert.ok(Math.abs(high.backoffS(2, null) - 2) < 1e-5);
  assert.equal(low.backoffS(0, 3), 3);
});

test("no answer within the timeout is a RequestTimeoutError (and a read is tried again)", async () => {
  const hang = (_url, init) =>
    new Promise((_, reject) =>
      init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))),
    );
  const { fetch, calls } = scripted(hang);
  const relay = new Relay("http://relay.test", "key", { fetch, timeout: 0.05, maxRetries: 1, ...fast });
  await assert.rejects(relay.tasks.get("task_x"), RequestTimeoutError);
  assert.equal(calls.length, 2);
});

test("an aborted call stops its retries at once", async () => {
  const { fetch, calls } = scripted(json(503, { detail: "away" }, { "retry-after": "1" }));
  const relay = new Relay("http://relay.test", "key", { fetch, ...fast });
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error("given up")), 100);
  await assert.rejects(relay.tasks.get("task_x", { signal: controller.signal }), /given up/);
  assert.equal(calls.length, 1);
});

/** An event-stream Response of these chunks (strings), ending after the last. */
function eventStream(...chunks) {
  const encoder = new TextEncoder();
  return new Response(
    new ReadableStream({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
        controller.close();
      },
    }),
    { status: 200, headers: { "content-type": "text/event-stream" } },
  );
}

const frame = (seq, type, status = "running") =>
  `id: ${seq}\r\nevent: ${type}\r\ndata: ${JSON.stringify({ id: `evt_${seq}`, type, task_id: "task_x", seq, data: { status } })}\r\n\r\n`;

test("a stream that drops is opened again after its last seq; nothing is yielded twice", async () => {
  const subscribed = (lastSeq) =>
    `event: subscribed\ndata: ${JSON.stringify({ type: "subscribed", task_id: "task_x", status: "running", last_seq: lastSeq, recovered: true })}\n\n`;
  const first = frame(2, "task.progress");
  const { fetch, calls } = scripted(
    () => eventStream(subscribed(0), ": keepalive\n\n", frame(1, "task.progress"), first.slice(0, 17), first.slice(17)),
    json(503, { detail: "restarting" }, { "retry-after": "0" }),
    () =>
      eventStream(
        subscribed(2),
        frame(2, "task.progress"),
        frame(3, "task.progress"),
        frame(4, "task.completed", "succeeded"),
        frame(5, "task.progress"),
      ),
  );
  const relay = new Relay("http://relay.test", "key", { fetch, ...fast });
  const seen = [];
  for await (const event of relay.tasks.stream("task_x")) seen.push(event.seq);
  assert.deepEqual(seen, [1, 2, 3, 4]); // once each, and nothing after the final event
  assert.equal(calls.length, 3);
  assert.equal(calls[0].headers["Last-Event-ID"], undefined);
  assert.equal(calls[2].headers["Last-Event-ID"], "2");
});

test("a stream that goes silent is opened again", async () => {
  const silent = () =>
    new Response(
      new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(frame(1, "task.progress")));
        },
      }),
      {
        status: 200,
      },
    );
  const { fetch, calls } = scripted(silent, () => eventStream(frame(2, "task.completed", "succeeded")));
  const relay = new Relay("http://relay.test", "key", { fetch, ...fast });
  const seen = [];
  for await (const event of relay.tasks.stream("task_x", { idleTimeout: 0.2 })) seen.push(event.seq);
  assert.deepEqual(seen, [1, 2]);
  assert.equal(calls[1].headers["Last-Event-ID"], "1");
});

test("a 2xx that is not JSON is an UnexpectedAnswerError", async () => {
  const { fetch } = scripted(new Response("<html>proxy</html>", { status: 200 }));
  await assert.rejects(new Relay("http://relay.test", "key", { fetch }).tasks.get("task_x"), UnexpectedAnswerError);
});
