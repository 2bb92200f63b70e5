// The JavaScript rows of scripts/bench-client: N submissions, one at a time, in one Node process, either with a
// bare fetch (each with its own Idempotency-Key, as the client sends) or with @relay/client's Relay.
//
//   node scripts/bench_client.mjs URL KEY N fetch|client
import { Relay } from "../clients/js/src/index.js";

const [url, key, count, way] = process.argv.slice(2);
const n = Number(count);
const body = JSON.stringify({ kind: "echo", input: { bench: true } });

if (way === "fetch") {
  for (let i = 0; i < n; i++) {
    const answer = await fetch(`${url}/v1/tasks`, {
      method: "POST",
      headers: {
        Authorization: `Bearer ${key}`,
        "Content-Type": "application/json",
        "Idempotency-Key": `bench-${crypto.randomUUID()}`,
      },
      body,
    });
    await answer.arrayBuffer();
    if (answer.status !== 202) throw new Error(`fetch: HTTP ${answer.status}`);
  }
} else if (way === "client") {
  const relay = new Relay(url, key);
  for (let i = 0; i < n; i++) await relay.tasks.submit("echo", { bench: true });
} else {
  throw new Error(`unknown way ${way}: fetch or client`);
}
