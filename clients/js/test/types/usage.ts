// Compiled by `tsc --noEmit` (never run): what a TypeScript user writes type-checks against the package's types,
// and what must not, does not.

import {
  ApiError,
  NotFoundError,
  Relay,
  RelayClient,
  RelayError,
  verifyWebhook,
  type DeadLetter,
  type Destination,
  type Event,
  type Stats,
  type Task,
  type TaskHandle,
} from "@relay/client";
import { RelayClient as Subscriber } from "@relay/client/subscriber";

export async function usage(): Promise<void> {
  const relay = new Relay("http://127.0.0.1:8000", "key", { timeout: 10, maxRetries: 3, fetch: globalThis.fetch });

  const task: TaskHandle = await relay.tasks.submit(
    "echo",
    { hello: "world" },
    {
      webhook: "https://example.com/hook",
      events: ["task.completed", "task.progress"],
      delayS: 2,
      idempotencyKey: "order-42",
    },
  );
  const ended: Task = await task.wait({ timeout: 30 });
  const status: "scheduled" | "queued" | "running" | "succeeded" | "failed" | "cancelled" = ended.status;
  void status;

  for await (const listed of relay.tasks.list({ status: "succeeded", since: new Date(), pageSize: 200 })) {
    const id: string = listed.id;
    void id;
  }
  for await (const page of relay.tasks.list().pages()) {
    const next: string | null = page.next_cursor;
    void next;
  }
  for await (const event of relay.tasks.stream(task.id, { afterSeq: 0 })) {
    const seq: number = event.seq;
    void seq;
  }
  const events: Event[] = await relay.tasks.events(task.id);
  void events;
  const attempts = await relay.tasks.deliveries(task.id);
  void attempts.attempts[0]?.outcome;

  const letters: DeadLetter[] = await relay.deadLetters.list({ reason: "retries_exhausted" }).toArray();
  const counted = await relay.deadLetters.replayBulk({ dryRun: true, reason: "endpoint_gone" });
  const matched: number = counted.matched;
  void letters;
  void matched;
  await relay.deadLetters.delete("dl_x");

  const destination: Destination = await relay.destinations.update("dst_x", { maxInFlight: 4, ratePerS: null });
  void destination.state;
  await relay.destinations.pause("dst_x");

  const stats: Stats = await relay.stats();
  void stats.tasks.submitted;
  const secret: string = await relay.signingSecret.get();
  const verified: Event = await verifyWebhook("{}", new Headers(), [secret, await relay.signingSecret.rotate()]);
  void verified;
  void (await relay.ops.cluster()).nodes;

  try {
    await relay.tasks.get("task_x");
  } catch (error) {
    if (error instanceof NotFoundError) console.log(error.status, error.detail);
    else if (error instanceof ApiError) console.log(error.retryAfterS);
    else if (error instanceof RelayError) console.log(error.message);
  }

  const subscriber = new RelayClient("http://127.0.0.1:8000", { pingIntervalMs: 1000 });
  subscriber.subscribe(task.id, task.ws_token ?? "", { onEvent: (event) => console.log(event.type) });
  new Subscriber().close();

  // @ts-expect-error replayBulk needs dryRun said
  await relay.deadLetters.replayBulk({});
  // @ts-expect-error not a task status
  relay.tasks.list({ status: "done" });
  // @ts-expect-error the wire's names, not camelCase
  void ended.createdAt;
}
