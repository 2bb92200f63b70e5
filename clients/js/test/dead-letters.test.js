// Dead letters through @relay/client: a tenant of its own (globex) whose receiver answers 410 Gone.

import assert from "node:assert/strict";
import { test } from "node:test";

import { NotFoundError } from "../src/index.js";
import { RECEIVER_URL, eventually, relay } from "./support.js";

test("bulk replay: a dry run counts and sends nothing, the replay sends each again", async () => {
  const client = relay();
  const tasks = await Promise.all(
    [1, 2, 3].map((n) => client.tasks.submit("echo", { n }, { webhook: `${RECEIVER_URL}/gone` })),
  );
  const ours = new Set(tasks.map((task) => task.id));
  const deadOf = async () => {
    const letters = await client.deadLetters.list({ reason: "endpoint_gone" }).toArray();
    return letters.filter((letter) => ours.has(letter.task_id));
  };
  const dead = await eventually(async () => (await deadOf()).length === 3 && deadOf(), {
    what: "three dead letters (410 Gone)",
  });
  for (const letter of dead) {
    assert.equal(letter.reason, "endpoint_gone");
    assert.equal(letter.replays, 0);
    assert.equal(letter.event.type, "task.completed");
    assert.deepEqual(await client.deadLetters.get(letter.id), letter);
  }

  const dryRun = await client.deadLetters.replayBulk({ dryRun: true, reason: "endpoint_gone" });
  assert.deepEqual(dryRun, { matched: 3, replayed: 0 });
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(
    (await deadOf()).map((letter) => letter.replays),
    [0, 0, 0],
    "a dry run replayed something",
  );
  const attemptsBefore = (await client.tasks.deliveries(tasks[0].id)).attempts.length;

  const replayed = await client.deadLetters.replayBulk({ dryRun: false, reason: "endpoint_gone" });
  assert.deepEqual(replayed, { matched: 3, replayed: 3 });
  // Still 410: each comes back with its replays raised, after one more attempt.
  await eventually(async () => (await deadOf()).every((letter) => letter.replays === 1), {
    what: "every dead letter back with replays 1",
  });
  assert.ok((await client.tasks.deliveries(tasks[0].id)).attempts.length > attemptsBefore);

  assert.throws(() => client.deadLetters.replayBulk({}), TypeError); // dryRun must be said

  const [first] = await deadOf();
  assert.equal(await client.deadLetters.replay(first.id), 1);
  await client.deadLetters.delete(first.id);
  await assert.rejects(client.deadLetters.get(first.id), NotFoundError);
});
