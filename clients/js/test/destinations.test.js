// Destinations through @relay/client: pause holds a destination's webhooks, resume releases them; caps change.

import assert from "node:assert/strict";
import { test } from "node:test";

import { RECEIVER_URL, eventually, relay } from "./support.js";

const delivered = async (task) =>
  (await task.deliveries()).attempts.some((a) => a.channel === "webhook" && a.outcome === "delivered");

test("pause holds the webhooks, resume sends them; caps are set and removed", async () => {
  const client = relay();
  const first = await client.tasks.submit("echo", { n: 1 }, { webhook: `${RECEIVER_URL}/destination` });
  await eventually(() => delivered(first), { what: "the first webhook delivered" });
  const origin = new URL(RECEIVER_URL).origin;
  let destination;
  for await (const one of client.destinations.list()) if (one.origin === origin) destination = one;
  assert.ok(destination, `no destination for ${origin}`);
  assert.deepEqual(await client.destinations.get(destination.id), await client.destinations.get(destination.id));

  const paused = await client.destinations.pause(destination.id);
  assert.equal(paused.state, "paused");
  const held = await client.tasks.submit("echo", { n: 2 }, { webhook: `${RECEIVER_URL}/destination` });
  assert.equal((await held.wait({ timeout: 20 })).status, "succeeded");
  await eventually(async () => (await client.destinations.get(destination.id)).owed >= 1, {
    what: "the webhook owed at the paused destination",
  });
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(await delivered(held), false, "a paused destination's webhook was sent");
  const pausedList = await client.destinations.list({ state: "paused" }).toArray();
  assert.ok(pausedList.some((one) => one.id === destination.id));

  const resumed = await client.destinations.resume(destination.id);
  assert.notEqual(resumed.state, "paused");
  await eventually(() => delivered(held), { what: "the held webhook delivered after resume" });

  const capped = await client.destinations.update(destination.id, { maxInFlight: 5, ratePerS: 50 });
  assert.equal(capped.max_in_flight, 5);
  assert.equal(capped.rate_per_s, 50);
  const uncapped = await client.destinations.update(destination.id, { ratePerS: null });
  assert.equal(uncapped.max_in_flight, 5);
  assert.equal(uncapped.rate_per_s, null);
});
