// Tasks through @relay/client on a real Relay: submit, wait, read back, list while others arrive, cancel, errors.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ConflictError,
  ForbiddenError,
  InvalidError,
  NotFoundError,
  UnauthorizedError,
  WaitTimeoutError,
} from "../src/index.js";
import { ADMIN_TOKEN, RECEIVER_URL, eventually, relay } from "./support.js";

test("submit, wait and read back", async () => {
  const client = relay();
  const task = await client.tasks.submit("echo", { hello: "world" });
  assert.match(task.id, /^task_/);
  assert.ok(["queued", "running", "succeeded"].includes(task.status));

  const ended = await task.wait({ timeout: 20 });
  assert.equal(ended.status, "succeeded");
  assert.deepEqual(ended.result, { hello: "world" });
  // The handle is the wire Task: JSON of it has the wire's fields and nothing of the client's.
  assert.deepEqual(Object.keys(JSON.parse(JSON.stringify(ended))).sort(), Object.keys(ended).sort());
  assert.ok(!("_tasks" in JSON.parse(JSON.stringify(ended))));

  const read = await client.tasks.get(task.id);
  assert.equal(read.status, "succeeded");
  assert.deepEqual((await read.refresh()).result, { hello: "world" });

  const events = await client.tasks.events(task.id);
  assert.deepEqual(
    events.map((event) => [event.seq, event.type]),
    [[1, "task.completed"]],
  );
  assert.deepEqual(events[0].data, { status: "succeeded", result: { hello: "world" } });
});

test("a webhook is delivered and its attempt read back", async () => {
  const client = relay();
  const task = await client.tasks.submit(
    "echo",
    { n: 1 },
    { webhook: `${RECEIVER_URL}/hook`, events: ["task.completed"] },
  );
  assert.deepEqual(task.webhook, { url: `${RECEIVER_URL}/hook`, events: ["task.completed"] });
  await task.wait({ timeout: 20 });
  const attempts = await eventually(
    async () => {
      const { attempts } = await task.deliveries();
      return attempts.some((a) => a.channel === "webhook" && a.outcome === "delivered") && attempts;
    },
    { what: "the webhook delivered" },
  );
  assert.equal(attempts.find((a) => a.channel === "webhook").status_code, 200);
});

test("a delayed task is scheduled, then runs", async () => {
  const client = relay();
  const task = await client.tasks.submit("echo", { later: true }, { delayS: 1 });
  assert.equal(task.status, "scheduled");
  assert.ok(task.run_at);
  const ended = await task.wait({ timeout: 20 });
  assert.equal(ended.status, "succeeded");
  assert.ok(Date.parse(ended.started_at) >= Date.parse(task.run_at) - 50);
});

test("the same idempotency key gives back the first task", async () => {
  const client = relay();
  const key = `order-${crypto.randomUUID()}`;
  const first = await client.tasks.submit("echo", { order: 42 }, { idempotencyKey: key });
  const again = await client.tasks.submit("echo", { order: 42 }, { idempotencyKey: key });
  assert.equal(again.id, first.id);
});

test("listing follows every page: 120 tasks, none repeated, none skipped, while others arrive", async () => {
  const client = relay();
  const since = new Date(Date.now() - 1000);
  const ours = new Set();
  for (let batch = 0; batch < 6; batch += 1) {
    const tasks = await Promise.all(Array.from({ length: 20 }, (_, n) => client.tasks.submit("echo", { batch, n })));
    for (const task of tasks) ours.add(task.id);
  }
  // More arrive while the list is read, a page at a time.
  const arriving = Promise.all(
    Array.from({ length: 30 }, async (_, n) => {
      await new Promise((resolve) => setTimeout(resolve, n * 10));
      return client.tasks.submit("echo", { arriving: n });
    }),
  );
  const seen = [];
  for await (const task of client.tasks.list({ since, pageSize: 25 })) {
    seen.push(task);
    if (seen.length % 25 === 0) await new Promise((resolve) => setTimeout(resolve, 20)); // let some arrive
  }
  await arriving;
  const ids = seen.map((task) => task.id);
  assert.equal(new Set(ids).size, ids.length, "a task was listed twice");
  const missing = [...ours].filter((id) => !ids.includes(id));
  assert.deepEqual(missing, [], "tasks submitted before the list began were skipped");
  for (let i = 1; i < seen.length; i += 1) {
    assert.ok(Date.parse(seen[i - 1].created_at) >= Date.parse(seen[i].created_at), "not newest first");
  }
  // Each item is a handle: it can be waited on.
  assert.equal((await seen.at(-1).wait({ timeout: 20 })).status, "succeeded");

  const pages = [];
  for await (const page of client.tasks.list({ since, pageSize: 50 }).pages()) pages.push(page);
  assert.ok(pages.length >= 3);
  assert.equal(pages.at(-1).next_cursor, null);
});

test("cancel a running task and a scheduled one; cancelling again is a conflict", async () => {
  const client = relay();
  const running = await client.tasks.submit("sleep", { seconds: 30 });
  await eventually(async () => (await running.refresh()).status === "running", { what: "the task running" });
  const cancelling = await running.cancel();
  assert.equal(cancelling.id, running.id);
  const ended = await running.wait({ timeout: 20 });
  assert.equal(ended.status, "cancelled");
  const events = await client.tasks.events(running.id);
  assert.equal(events.at(-1).type, "task.cancelled");
  await assert.rejects(
    client.tasks.cancel(running.id),
    (error) => error instanceof ConflictError && error.status === 409,
  );

  const scheduled = await client.tasks.submit("echo", {}, { delayS: 600 });
  assert.equal((await client.tasks.cancel(scheduled.id)).status, "cancelled");
});

test("wait gives up at its timeout", async () => {
  const client = relay();
  const task = await client.tasks.submit("sleep", { seconds: 20 });
  const started = Date.now();
  await assert.rejects(task.wait({ timeout: 0.5 }), WaitTimeoutError);
  assert.ok(Date.now() - started < 5000);
  await task.cancel();
});

test("errors carry the status and Relay's detail, one class per status", async () => {
  const client = relay();
  await assert.rejects(client.tasks.get("task_nosuchtask"), (error) => {
    assert.ok(error instanceof NotFoundError);
    assert.equal(error.status, 404);
    assert.match(error.detail, /task_nosuchtask/);
    return true;
  });
  await assert.rejects(client.tasks.submit("no-such-kind", {}), (error) => {
    assert.ok(error instanceof InvalidError);
    assert.equal(error.status, 422);
    assert.match(error.detail, /unknown task kind/);
    return true;
  });
  await assert.rejects(relay("not-a-key").tasks.get("task_x"), UnauthorizedError);
  await assert.rejects(client.ops.cluster(), ForbiddenError);
  await assert.rejects(client.tasks.submit("echo", {}, { runAt: new Date(), delayS: 1 }), TypeError);
});

test("an admin token reads every tenant's figures and the operator's secret", async () => {
  const admin = relay(ADMIN_TOKEN);
  const stats = await admin.stats();
  assert.equal(stats.tenant, null);
  assert.ok(stats.tasks.submitted > 0);
  assert.match(await admin.ops.signingSecret(), /^whsec_/);
  assert.equal((await admin.ops.cluster()).mode, "standalone");
  assert.equal((await relay().stats()).tenant, "acme");
  assert.equal((await admin.stats({ tenant: "globex" })).tenant, "globex");
});
