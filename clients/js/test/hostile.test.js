// What the client does with answers that are not Relay's (a proxy's page, a misconfigured URL, a hostile host) and with
// webhooks that are not Relay's: it stays bounded in memory and time, throws only errors of its tree, and never shows
// the API key. Against small servers of the test's own on 127.0.0.1 (no Relay needed).

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { test } from "node:test";
import { inspect } from "node:util";

import {
  ApiError,
  Relay,
  TransportError,
  UnexpectedAnswerError,
  WebhookVerificationError,
  verifyWebhook,
} from "../src/index.js";
import { parseRetryAfter } from "../src/http.js";

const KEY = "rk_test_never_shown_0123456789";
const MB = 1024 * 1024;
const fast = { retryBaseDelay: 0.001, retryMaxDelay: 0.01, maxRetries: 2 };

/** An HTTP server on `host` whose answers `handle(request, response)` writes; its URL, its requests, close(). */
async function serve(handle, host = "127.0.0.1") {
  const requests = [];
  const server = createServer((request, response) => {
    requests.push({ url: request.url, authorization: request.headers.authorization });
    handle(request, response);
  });
  await new Promise((resolve) => server.listen(0, host, resolve));
  const url = `http://${host}:${server.address().port}`;
  return {
    url,
    requests,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Write `chunk` until the client hangs up (or `limit` bytes are out): an answer with no end. */
function endless(response, chunk, limit = 512 * MB) {
  let sent = 0;
  const more = () => {
    while (sent < limit && !response.destroyed) {
      sent += chunk.length;
      if (!response.write(chunk)) return void response.once("drain", more);
    }
  };
  response.on("error", () => {});
  more();
}

const TASK = { id: "task_x", kind: "echo", status: "running", input: null, created_at: "2026-12-07T00:00:00Z" };
const SUBSCRIBED = 'event: subscribed\ndata: {"task_id":"task_x","status":"running","last_seq":0,"recovered":true}\n\n';

test("an answer larger than maxAnswerBytes is an UnexpectedAnswerError, read no further", async () => {
  const server = await serve((_request, response) => {
    response.writeHead(200, { "content-type": "application/json" });
    endless(response, Buffer.alloc(64 * 1024, 32));
  });
  try {
    const relay = new Relay(server.url, KEY, { ...fast, maxAnswerBytes: MB });
    await assert.rejects(relay.tasks.get("task_x"), (error) => {
      assert.ok(error instanceof UnexpectedAnswerError, error);
      assert.match(error.message, /more than 1048576 bytes/);
      return true;
    });
  } finally {
    await server.close();
  }
});

test("an error answer of any size keeps only its start as the detail", async () => {
  const server = await serve((_request, response) => {
    response.writeHead(500);
    endless(response, Buffer.alloc(64 * 1024, 120));
  });
  try {
    const error = await new Relay(server.url, KEY, fast).tasks.get("task_x").catch((e) => e);
    assert.ok(error instanceof ApiError, error);
    assert.equal(error.status, 500);
    assert.ok(error.detail.length <= 500 && error.message.length < 1000, `a detail of ${error.detail.length}`);
  } finally {
    await server.close();
  }
});

test("a stream that never ends its line or its event is an UnexpectedAnswerError, not all of memory", async () => {
  for (const [what, chunk] of [
    ["a line", Buffer.from(": " + "x".repeat(64 * 1024))],
    ["an event", Buffer.from("data: " + "x".repeat(64 * 1024) + "\n")],
  ]) {
    const server = await serve((request, response) => {
      if (!request.url.endsWith("/stream")) return void response.end(JSON.stringify(TASK));
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.write(SUBSCRIBED);
      endless(response, chunk);
    });
    try {
      const relay = new Relay(server.url, KEY, { ...fast, maxAnswerBytes: MB });
      const started = Date.now();
      await assert.rejects(relay.tasks.stream("task_x").next(), (error) => {
        assert.ok(error instanceof UnexpectedAnswerError, error);
        assert.match(error.message, new RegExp(`sent ${what} longer than`));
        return true;
      });
      assert.ok(Date.now() - started < 5000, `${what}: ${Date.now() - started} ms`);
      assert.equal(server.requests.length, 1, "a hostile stream was opened again");
    } finally {
      await server.close();
    }
  }
});

test("lines broken across chunks, and \\r\\n split between two, still make each event once", async () => {
  const event = (seq, type) => JSON.stringify({ id: `evt_${seq}`, seq, type, task_id: "task_x", data: { seq } });
  const text = `${SUBSCRIBED}: ping\r\nid: 1\r\nevent: task.progress\r\ndata: ${event(1, "task.progress")}\r\n\r\nid: 2\revent: task.completed\rdata: ${event(2, "task.completed")}\r\r`;
  const pieces = [];
  for (let at = 0; at < text.length; at += 7) pieces.push(text.slice(at, at + 7));
  const server = await serve(async (_request, response) => {
    response.writeHead(200, { "content-type": "text/event-stream" });
    for (const piece of pieces) {
      response.write(piece);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    response.end();
  });
  try {
    const seen = [];
    for await (const one of new Relay(server.url, KEY, fast).tasks.stream("task_x")) seen.push([one.seq, one.type]);
    assert.deepEqual(seen, [
      [1, "task.progress"],
      [2, "task.completed"],
    ]);
  } finally {
    await server.close();
  }
});

test("an event that is not JSON is an UnexpectedAnswerError", async () => {
  const server = await serve((_request, response) => {
    response.writeHead(200, { "content-type": "text/event-stream" });
    response.end(SUBSCRIBED + "id: 1\nevent: task.progress\ndata: {not json\n\n");
  });
  try {
    await assert.rejects(new Relay(server.url, KEY, fast).tasks.stream("task_x").next(), UnexpectedAnswerError);
  } finally {
    await server.close();
  }
});

test("a redirect is not followed: the other host gets neither the request nor its body", async () => {
  const other = await serve((_request, response) => response.end(JSON.stringify(TASK)), "127.0.0.2");
  const server = await serve((request, response) => {
    response.writeHead(307, { location: `${other.url}${request.url}` });
    response.end();
  });
  try {
    const relay = new Relay(server.url, KEY, fast);
    for (const call of [() => relay.tasks.get("task_x"), () => relay.tasks.submit("echo", { card: "4111" })]) {
      await assert.rejects(call(), (error) => {
        assert.ok(error instanceof UnexpectedAnswerError, error);
        assert.match(error.message, /redirect to http:\/\/127\.0\.0\.2/);
        return true;
      });
    }
    assert.equal(server.requests.length, 2, "a redirect was retried");
    assert.deepEqual(other.requests, []);
  } finally {
    await server.close();
    await other.close();
  }
});

test("lists that would never end, and pages that are not pages, are UnexpectedAnswerErrors", async () => {
  const server = await serve((request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    const cursor = new URL(request.url, "http://x").searchParams.get("cursor");
    if (path.startsWith("/same")) response.end(JSON.stringify({ items: [TASK], next_cursor: "c1" }));
    // Relay's own lists may answer a page with no items and a cursor (it looked at as many entries as a page may,
    // and none matched): that page moves on, and is followed.
    else if (path.startsWith("/empty") && cursor === null)
      response.end(JSON.stringify({ items: [], next_cursor: "c1" }));
    else if (path.startsWith("/empty")) response.end(JSON.stringify({ items: [TASK], next_cursor: null }));
    else if (path.startsWith("/none")) response.end(JSON.stringify({ next_cursor: null }));
    else response.end(JSON.stringify({ events: [], next_after_seq: 0 }));
  });
  try {
    const list = (prefix) => new Relay(`${server.url}/${prefix}`, KEY, fast).tasks.list().toArray();
    await assert.rejects(list("same"), /answered a cursor it had answered before/);
    await assert.rejects(list("none"), UnexpectedAnswerError);
    assert.deepEqual(
      (await list("empty")).map((task) => task.id),
      [TASK.id],
    );
    await assert.rejects(new Relay(`${server.url}/events`, KEY, fast).tasks.events("task_x"), UnexpectedAnswerError);
    assert.ok(server.requests.length < 10, `${server.requests.length} requests`);
  } finally {
    await server.close();
  }
});

test("the API key is in no inspection, JSON or error of the client", async () => {
  const server = await serve((_request, response) => {
    response.writeHead(401, { "content-type": "application/json" });
    response.end(JSON.stringify({ detail: "unknown API key or token" }));
  });
  try {
    const relay = new Relay(server.url, KEY, fast);
    const error = await relay.tasks.get("task_x").catch((e) => e);
    assert.equal(server.requests[0].authorization, `Bearer ${KEY}`);
    const closed = await new Relay("http://127.0.0.1:1", KEY, fast).tasks.get("task_x").catch((e) => e);
    for (const shown of [
      inspect(relay, { depth: 10, showHidden: true }),
      inspect(relay.tasks, { depth: 10, showHidden: true }),
      inspect(relay.tasks.list(), { depth: 10 }),
      JSON.stringify(relay.tasks.list()),
      inspect(error, { depth: 10 }),
      inspect(closed, { depth: 10 }),
    ]) {
      assert.ok(!shown.includes(KEY), shown);
    }
  } finally {
    await server.close();
  }
});

test("a base URL that is not http or https is refused at once, and a dead one says how long it was tried", async () => {
  for (const url of ["127.0.0.1:8000", "ftp://127.0.0.1:8000", "relay"]) {
    assert.throws(() => new Relay(url, KEY), /needs an http:\/\/ or https:\/\/ base URL/);
  }
  const error = await new Relay("http://127.0.0.1:1", KEY, fast).tasks.get("task_x").catch((e) => e);
  assert.ok(error instanceof TransportError, error);
  assert.match(error.message, /no answer in 3 tries over \d+ s/);
});

test("Retry-After is delta-seconds or an HTTP date, and nothing else", () => {
  assert.equal(parseRetryAfter("-5"), null);
  assert.equal(parseRetryAfter("1e3"), null);
  assert.equal(parseRetryAfter("120"), 120);
  assert.ok(parseRetryAfter(new Date(Date.now() + 60_000).toUTCString()) > 50);
});

// Webhooks: whatever a request carries, verifyWebhook answers a WebhookVerificationError, quickly.

const SECRET_BYTES = Buffer.alloc(32, 7);
const SECRET = `whsec_${SECRET_BYTES.toString("base64")}`;
const BODY = JSON.stringify({ id: "evt_1", type: "task.completed", task_id: "task_x", seq: 1, data: {} });

function signed(body = BODY, nowS = Math.floor(Date.now() / 1000)) {
  const mac = createHmac("sha256", SECRET_BYTES).update(`msg_1.${nowS}.${body}`).digest("base64");
  return { "webhook-id": "msg_1", "webhook-timestamp": String(nowS), "webhook-signature": `v1,${mac}` };
}

test("hostile webhook headers and secrets are WebhookVerificationErrors", async () => {
  const good = signed();
  const nowS = Number(good["webhook-timestamp"]);
  const cases = {
    "no headers": [BODY, {}, SECRET],
    "empty signature": [BODY, { ...good, "webhook-signature": "" }, SECRET],
    "not base64": [BODY, { ...good, "webhook-signature": "v1,!!!***" }, SECRET],
    "another version": [
      BODY,
      { ...good, "webhook-signature": good["webhook-signature"].replace("v1,", "v1a,") },
      SECRET,
    ],
    "huge signature": [BODY, { ...good, "webhook-signature": `v1,${"A".repeat(4 * MB)}` }, SECRET],
    "many signatures": [BODY, { ...good, "webhook-signature": Array(100_000).fill("v1,AAAA").join(" ") }, SECRET],
    "timestamp words": [BODY, { ...good, "webhook-timestamp": "abc" }, SECRET],
    "timestamp huge": [BODY, { ...good, "webhook-timestamp": "9".repeat(400) }, SECRET],
    "timestamp negative": [BODY, { ...good, "webhook-timestamp": "-1" }, SECRET],
    "timestamp float": [BODY, { ...good, "webhook-timestamp": `${nowS}.5` }, SECRET],
    "secret not base64": [BODY, good, "whsec_***"],
    "secret empty": [BODY, good, "whsec_"],
    "no secret": [BODY, good, []],
    "one bad secret of two": [BODY, good, ["whsec_***", SECRET]],
  };
  for (const [name, args] of Object.entries(cases)) {
    const started = Date.now();
    await assert.rejects(verifyWebhook(...args), WebhookVerificationError, name);
    assert.ok(Date.now() - started < 1000, `${name}: ${Date.now() - started} ms`);
  }
  // A header given as a number (a framework's parsed headers) is read as its text.
  const event = await verifyWebhook(BODY, { ...good, "webhook-timestamp": nowS }, SECRET);
  assert.equal(event.id, "evt_1");
});

test("a tolerance that is not a number is refused rather than letting a webhook of any age through", async () => {
  const old = signed(BODY, Math.floor(Date.now() / 1000) - 86_400);
  for (const toleranceS of [NaN, Infinity, "300", -1]) {
    await assert.rejects(verifyWebhook(BODY, old, SECRET, { toleranceS }), TypeError);
  }
  await assert.rejects(verifyWebhook(BODY, old, SECRET), /too old/);
});
