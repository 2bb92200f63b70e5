// What the node test files share: the Relay the pytest side started, and the way to ask it for what only it can do.

import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { Relay } from "../src/index.js";

export const RELAY_URL = need("RELAY_URL");
export const API_KEY = need("RELAY_API_KEY");
export const ADMIN_TOKEN = need("RELAY_ADMIN_TOKEN");
// The test receiver's base URL (paths are the test's own; it answers 200 unless the pytest side scripted a path).
export const RECEIVER_URL = need("RELAY_RECEIVER_URL");

/** A client of the test's Relay with the tenant's key (or `key`). */
export function relay(key = API_KEY, options = {}) {
  return new Relay(RELAY_URL, key, options);
}

/** Ask the pytest side for `name` (restart-api, freeze) and wait until it is done. */
export async function ask(name, timeoutMs = 60_000) {
  const dir = need("RELAY_CONTROL_DIR");
  await writeFile(join(dir, name), "");
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(join(dir, `${name}.done`))) {
    if (Date.now() > deadline) throw new Error(`the pytest side did not do ${name} in ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Poll `probe` until it returns something truthy; that value. */
export async function eventually(probe, { timeoutMs = 20_000, intervalMs = 100, what = "a condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: these tests run from tests/clients/js/test_js_client.py`);
  return value;
}
