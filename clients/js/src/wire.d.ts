// The objects Relay sends and takes, as its OpenAPI document (/schema/openapi.json) describes them: one interface per
// component schema, named as the schema, a property optional (`?`) exactly where the schema does not require it and
// `| null` exactly where it allows null. tests/clients/js/test_js_client.py compares the two and names what drifted.
// Times are RFC 3339 strings in UTC.

export type TaskStatus = "scheduled" | "queued" | "running" | "succeeded" | "failed" | "cancelled";

export type EventType = "task.progress" | "task.completed" | "task.failed" | "task.cancelled" | "task.retrying";

export type Channel = "websocket" | "webhook";

export type DeliveryOutcome = "delivered" | "acked" | "failed" | "unacked" | "skipped";

export type DeadLetterReason = "retries_exhausted" | "endpoint_gone" | "forbidden_address";

export type DestinationState = "healthy" | "degraded" | "open" | "paused";

export type StepKind = "dead_lettered" | "replayed";

export interface Webhook {
  url: string;
  /** The event types posted to it; the final ones when left out. */
  events?: EventType[] | null;
}

export interface TaskSubmission {
  kind: string;
  input?: unknown;
  webhook?: Webhook | null;
  websocket?: boolean;
  run_at?: string | null;
  delay_s?: number | null;
}

export interface TaskError {
  type: string;
  message: string;
}

export interface Progress {
  percent: number;
  message?: string | null;
}

export interface Task {
  id: string;
  kind: string;
  status: TaskStatus;
  input: unknown;
  created_at: string;
  result?: unknown;
  error?: TaskError | null;
  progress?: Progress | null;
  webhook?: Webhook | null;
  websocket?: boolean;
  started_at?: string | null;
  finished_at?: string | null;
  /** Shown to the task's owner only: the token a browser follows the task with. */
  ws_token?: string | null;
  run_at?: string | null;
  /** 1 on the first run, raised by each retry of the work. */
  attempt?: number;
}

export interface TaskPage {
  items: Task[];
  next_cursor: string | null;
}

export interface Event {
  id: string;
  type: EventType;
  task_id: string;
  /** 1 for a task's first event, raised by one for each next. */
  seq: number;
  created_at: string;
  /**
   * `task.completed`: `{status: "succeeded", result}`; `task.failed`: `{status: "failed", error}`;
   * `task.cancelled`: `{status: "cancelled"}`; `task.progress`: `{percent, message}`;
   * `task.retrying`: `{attempt, error, run_at}`.
   */
  data: unknown;
}

export interface EventList {
  events: Event[];
  next_after_seq?: number | null;
}

export interface Attempt {
  event_id: string;
  channel: Channel;
  attempt: number;
  at: string;
  outcome: DeliveryOutcome;
  status_code?: number | null;
  error?: string | null;
  duration_ms?: number;
}

export interface DeliveryStep {
  event_id: string;
  step: StepKind;
  at: string;
  dead_letter_id: string;
  reason?: DeadLetterReason | null;
}

export interface AttemptList {
  attempts: Attempt[];
  next_cursor?: string | null;
  steps?: DeliveryStep[];
}

export interface DeadLetter {
  id: string;
  tenant: string;
  task_id: string;
  event: Event;
  url: string;
  reason: DeadLetterReason;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  first_attempt_at: string;
  dead_at: string;
  replays?: number;
}

export interface DeadLetterPage {
  items: DeadLetter[];
  next_cursor: string | null;
}

export interface ReplayFilter {
  dry_run: boolean;
  reason?: DeadLetterReason | null;
  tenant?: string | null;
  since?: string | null;
  until?: string | null;
}

export interface ReplayOne {
  replayed: number;
}

export interface ReplayResult {
  matched: number;
  replayed: number;
}

export interface Destination {
  id: string;
  tenant: string;
  /** Scheme, host and port of the callback URLs it stands for. */
  origin: string;
  state: DestinationState;
  max_in_flight: number;
  rate_per_s: number | null;
  in_flight: number;
  /** Webhooks waiting, held or due, in flight included. */
  owed: number;
  consecutive_failures: number;
  last_success_at: string | null;
  last_failure_at: string | null;
  last_error: string | null;
  opened_at: string | null;
  next_probe_at: string | null;
}

export interface DestinationPage {
  items: Destination[];
  next_cursor: string | null;
}

export interface DestinationCaps {
  max_in_flight?: number;
  /** null removes the rate. */
  rate_per_s?: number | null;
}

export interface SigningSecret {
  secret: string;
}

export interface TaskCounts {
  submitted: number;
  scheduled: number;
  retried: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  open: number;
}

export interface Webhooks {
  owed: number;
  held: number;
}

export interface DeadLetters {
  stored: number;
  by_reason: Record<string, number>;
}

export interface Latency {
  p50_ms: number | null;
  p99_ms: number | null;
  delivered: number;
  window_s?: number | null;
}

export interface Rates {
  window_s: number;
  tasks_submitted: number;
  tasks_ended: number;
  tasks_retried: number;
  deliveries: number;
  webhook_failures: number;
  dead_lettered: number;
  latency: Latency;
}

export interface Stats {
  /** Whose figures these are (null: every tenant's). */
  tenant: string | null;
  at: string;
  tasks: TaskCounts;
  /** channel -> outcome -> attempts since the store began. */
  deliveries: Record<string, Record<string, number>>;
  webhooks: Webhooks;
  dead_letters: DeadLetters;
  destinations: Record<string, number>;
  queue_depth: number | null;
  latency: Latency;
  rates: Rates | null;
}

export interface StorageNode {
  address: string;
  role: "master" | "replica";
  up: boolean;
  master?: string | null;
  slots: number;
  partitions: number;
  keys?: number | null;
  memory_bytes?: number | null;
  commands_per_s?: number | null;
  owed_tasks?: number | null;
  owed_webhooks?: number | null;
}

export interface ClusterView {
  mode: "standalone" | "cluster";
  partitions: number;
  nodes: StorageNode[];
  workers: string[] | null;
  api_nodes: string[] | null;
}

/** The body of every error answer. */
export interface ErrorBody {
  status_code: number;
  detail: string;
  /** What did not fit, for a 422: one entry per problem. */
  extra?: Array<{ message: string; key?: string; source?: string }> | Record<string, unknown> | null;
}

/** The first message of a task's stream (and the WebSocket's `subscribed` frame). */
export interface Subscribed {
  type: "subscribed";
  task_id: string;
  status: TaskStatus;
  last_seq: number;
  /** false when some events after the resume point are no longer kept. */
  recovered: boolean;
}
