// A task's stream across an API restart: every event once, in order, none lost.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RelayClient } from "../src/index.js";
import { RELAY_URL, ask, relay } from "./support.js";

test("a stream resumes after the API restarts mid-task, with no event lost or repeated", async () => {
  const client = relay();
  const task = await client.tasks.submit("sleep", { seconds: 4 });
  const subscribed = [];
  const seqs = [];
  const types = [];
  let restarted = false;
  for await (const event of client.tasks.stream(task.id, { onSubscribed: (frame) => subscribed.push(frame) })) {
    seqs.push(event.seq);
    types.push(event.type);
    if (event.seq === 2 && !restarted) {
      restarted = true;
      await ask("restart-api"); // stops the API (the stream ends with it) and starts it again on the same port
    }
  }
  assert.ok(restarted, "the task ended before its second event");
  assert.ok(subscribed.length >= 2, `the stream was never opened again (${subscribed.length} subscribed)`);
  assert.equal(types.at(-1), "task.completed");
  const stored = await client.tasks.events(task.id);
  assert.deepEqual(
    seqs,
    stored.map((event) => event.seq),
    "the stream and the log differ",
  );
  assert.deepEqual(
    seqs,
    Array.from({ length: seqs.length }, (_, i) => i + 1),
  );
});

test("a stream of an ended task gives what is kept, then ends; from its last seq it ends at once", async () => {
  const client = relay();
  const task = await client.tasks.submit("echo", { done: true });
  await task.wait({ timeout: 20 });
  const events = [];
  for await (const event of task.stream()) events.push(event);
  assert.deepEqual(
    events.map((event) => event.type),
    ["task.completed"],
  );
  const after = [];
  for await (const event of task.stream({ afterSeq: events.at(-1).seq })) after.push(event);
  assert.deepEqual(after, []);
});

test("leaving a stream early closes it", async () => {
  const client = relay();
  const task = await client.tasks.submit("sleep", { seconds: 3 });
  for await (const event of task.stream()) {
    assert.equal(event.seq, 1);
    break;
  }
  const ended = await task.wait({ timeout: 20 });
  assert.equal(ended.status, "succeeded");
});

test("the browser subscriber runs here too: each event once, in order, over whichever channel Node has", async () => {
  const client = relay();
  const task = await client.tasks.submit("sleep", { seconds: 1 });
  const subscriber = new RelayClient(RELAY_URL);
  const seqs = [];
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no final event; got ${seqs}`)), 20_000);
      subscriber.subscribe(task.id, task.ws_token, {
        onEvent: (event) => {
          seqs.push(event.seq);
          if (event.type === "task.completed") {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    subscriber.close();
  }
  assert.deepEqual(
    seqs,
    Array.from({ length: seqs.length }, (_, i) => i + 1),
  );
});
