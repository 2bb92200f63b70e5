// Submissions while Redis is frozen (the pytest side SIGSTOPs it for a few seconds when asked), with the client's
// defaults: every call ends with its task, and each task exists once (a tenant of its own: initech).

import assert from "node:assert/strict";
import { test } from "node:test";

import { ask, relay } from "./support.js";

const COUNT = 50;
const SUBMITTERS = 5;

test("50 submissions across a Redis freeze: each stored once, none failed", async () => {
  const client = relay();
  const answered = [];
  let next = 0;
  let frozen = null;
  const submitter = async () => {
    while (next < COUNT) {
      const n = next;
      next += 1;
      if (n === SUBMITTERS) frozen = ask("freeze"); // a few are in before the freeze, the rest meet it
      if (frozen !== null) await frozen;
      answered.push(await client.tasks.submit("echo", { n }));
    }
  };
  await Promise.all(Array.from({ length: SUBMITTERS }, submitter));
  assert.equal(answered.length, COUNT);
  assert.equal(new Set(answered.map((task) => task.id)).size, COUNT, "two calls were answered with one task");

  const stored = await client.tasks.list().toArray();
  const inputs = stored.map((task) => task.input.n).sort((a, b) => a - b);
  assert.deepEqual(
    inputs,
    Array.from({ length: COUNT }, (_, n) => n),
    "not exactly one task per submission",
  );
  const ended = await Promise.all(answered.map((task) => task.wait({ timeout: 60 })));
  assert.ok(ended.every((task) => task.status === "succeeded"));
});
