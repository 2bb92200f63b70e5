// verifyWebhook on webhooks a real Relay sent to the test receiver (captured by the pytest side, in
// RELAY_WEBHOOKS_FILE): before a secret rotation, and during it, when two signatures are sent.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { WebhookVerificationError, verifyWebhook } from "../src/index.js";

const captured = JSON.parse(readFileSync(process.env.RELAY_WEBHOOKS_FILE, "utf8"));
const { old_secret: oldSecret, new_secret: newSecret } = captured;
const bodyOf = (webhook) => Buffer.from(webhook.body, "base64");
const header = (webhook, name) => Object.entries(webhook.headers).find(([key]) => key.toLowerCase() === name)[1];

test("a real webhook verifies and gives its Event", async () => {
  const { before } = captured;
  const event = await verifyWebhook(bodyOf(before), before.headers, oldSecret);
  assert.equal(event.task_id, before.task_id);
  assert.equal(event.type, "task.completed");
  assert.equal(event.id, header(before, "webhook-id"));
  // The body as a string and the headers as a Headers object verify the same.
  const asString = new TextDecoder().decode(bodyOf(before));
  assert.deepEqual(await verifyWebhook(asString, new Headers(before.headers), oldSecret), event);
  const upper = new Map(Object.entries(before.headers).map(([key, value]) => [key.toUpperCase(), value]));
  assert.deepEqual(await verifyWebhook(new Uint8Array(bodyOf(before)).buffer, upper, oldSecret), event);
});

test("during a rotation, either secret verifies, and both given together", async () => {
  const { during } = captured;
  for (const secret of [oldSecret, newSecret, [oldSecret, newSecret], ["whsec_" + btoa("another"), newSecret]]) {
    const event = await verifyWebhook(bodyOf(during), during.headers, secret);
    assert.equal(event.task_id, during.task_id);
  }
  // The webhook sent before the rotation knows only the old secret.
  await assert.rejects(
    verifyWebhook(bodyOf(captured.before), captured.before.headers, newSecret),
    WebhookVerificationError,
  );
});

test("a changed body, another secret, an old or a future timestamp are refused", async () => {
  const { before } = captured;
  const body = bodyOf(before);
  const changed = Buffer.from(body.toString("utf8").replace('"succeeded"', '"failed"   '));
  assert.notDeepEqual(changed, body);
  await assert.rejects(verifyWebhook(changed, before.headers, oldSecret), WebhookVerificationError);
  await assert.rejects(
    verifyWebhook(body, before.headers, "whsec_" + btoa("not the tenant's secret at all")),
    WebhookVerificationError,
  );
  const sentMs = Number(header(before, "webhook-timestamp")) * 1000;
  await assert.rejects(verifyWebhook(body, before.headers, oldSecret, { now: () => sentMs + 301_000 }), /too old/);
  await assert.rejects(
    verifyWebhook(body, before.headers, oldSecret, { now: () => sentMs - 301_000 }),
    /in the future/,
  );
  assert.ok(await verifyWebhook(body, before.headers, oldSecret, { now: () => sentMs + 299_000 }));
  // Another timestamp in the header, with the signature made for the real one: refused.
  const restamped = { ...before.headers };
  for (const key of Object.keys(restamped)) {
    if (key.toLowerCase() === "webhook-timestamp") restamped[key] = String(Number(restamped[key]) + 1);
  }
  await assert.rejects(verifyWebhook(body, restamped, oldSecret), WebhookVerificationError);
  const unsigned = Object.fromEntries(
    Object.entries(before.headers).filter(([key]) => key.toLowerCase() !== "webhook-signature"),
  );
  await assert.rejects(verifyWebhook(body, unsigned, oldSecret), /missing/);
});
