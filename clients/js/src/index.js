// @relay/client: Relay's client for Node 20+, browsers and edge runtimes. Plain ES modules on fetch and Web Crypto,
// with hand-written types beside them (index.d.ts): nothing to build, in this package or in yours.
//
//   import { Relay } from "@relay/client";
//   const relay = new Relay("http://127.0.0.1:8000", process.env.RELAY_API_KEY);
//   const task = await relay.tasks.submit("echo", { hello: "world" });
//   console.log((await task.wait({ timeout: 30 })).result);

export { DEFAULT_PAGE_SIZE, Pager, Relay, TaskHandle } from "./client.js";
export {
  ApiError,
  BadRequestError,
  ConflictError,
  ForbiddenError,
  InvalidError,
  NotFoundError,
  RateLimitedError,
  RelayError,
  RequestTimeoutError,
  StreamError,
  TransportError,
  UnauthorizedError,
  UnavailableError,
  UnexpectedAnswerError,
  WaitTimeoutError,
  WebhookVerificationError,
} from "./errors.js";
export {
  DEFAULT_MAX_ANSWER_BYTES,
  DEFAULT_MAX_RETRIES,
  DEFAULT_RETRY_BASE_DELAY_S,
  DEFAULT_RETRY_MAX_DELAY_S,
  DEFAULT_TIMEOUT_S,
} from "./http.js";
export { DEFAULT_IDLE_TIMEOUT_S } from "./stream.js";
export { RelayClient } from "./subscriber.js";
export { DEFAULT_TOLERANCE_S, MAX_SIGNATURES, verifyWebhook } from "./webhooks.js";
