// Every error this package throws, as one tree (catch RelayError for all of them):
//
//   RelayError
//   ├── ApiError                  Relay answered with an error status: .status, .detail, .retryAfterS
//   │   ├── BadRequestError       400, 413: a request Relay cannot take (413: a body over RELAY_MAX_BODY_BYTES)
//   │   │   └── InvalidError      422: an unknown kind, an input that does not fit it, a refused webhook URL
//   │   ├── UnauthorizedError     401: no key, or one Relay does not know
//   │   ├── ForbiddenError        403: a key without the right (an admin token where a tenant's key is needed)
//   │   ├── NotFoundError         404: no such thing for this caller (another tenant's ids answer the same)
//   │   ├── ConflictError         409: a task that has ended already, a record that cannot be read
//   │   ├── RateLimitedError      429: over a rate or a cap (retried for submissions and reads first)
//   │   └── UnavailableError      503: storage or broker away (retried for submissions and reads first)
//   ├── TransportError            no answer at all: connection refused or reset, DNS, a request timeout
//   │   └── RequestTimeoutError   no answer within the client's timeout
//   ├── UnexpectedAnswerError     an answer this client cannot read: a 2xx that is not JSON (a proxy's page), one over
//   │                             maxAnswerBytes, a redirect (Relay sends none), a list whose cursor comes back
//   ├── StreamError               a task's stream ended for good with an error (its task is gone with the store)
//   ├── WaitTimeoutError          wait() gave up: the task had not ended within its timeout
//   └── WebhookVerificationError  verifyWebhook() refused a request (bad or missing signature, stale timestamp)

export class RelayError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class ApiError extends RelayError {
  /**
   * @param {number} status the HTTP status
   * @param {string} detail Relay's human-readable `detail`
   * @param {{body?: unknown, retryAfterS?: number | null, method?: string, path?: string}} [info]
   */
  constructor(status, detail, { body = null, retryAfterS = null, method = "", path = "" } = {}) {
    super(`${method} ${path} answered ${status}: ${detail}`.trim());
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.retryAfterS = retryAfterS;
  }
}

export class BadRequestError extends ApiError {}
export class InvalidError extends BadRequestError {}
export class UnauthorizedError extends ApiError {}
export class ForbiddenError extends ApiError {}
export class NotFoundError extends ApiError {}
export class ConflictError extends ApiError {}
export class RateLimitedError extends ApiError {}
export class UnavailableError extends ApiError {}

const BY_STATUS = new Map([
  [400, BadRequestError],
  [401, UnauthorizedError],
  [403, ForbiddenError],
  [404, NotFoundError],
  [409, ConflictError],
  [413, BadRequestError],
  [422, InvalidError],
  [429, RateLimitedError],
  [503, UnavailableError],
]);

/** The error class for an answer's status: one of the tree's, or ApiError itself for the others. */
export function apiErrorClass(status) {
  return BY_STATUS.get(status) ?? ApiError;
}

export class TransportError extends RelayError {}
export class UnexpectedAnswerError extends RelayError {}
export class RequestTimeoutError extends TransportError {}

export class StreamError extends RelayError {
  /** @param {string} code the server's error code (`store_lost`) @param {string} message its words */
  constructor(code, message) {
    super(`stream ended: ${code}: ${message}`);
    this.code = code;
  }
}

export class WaitTimeoutError extends RelayError {
  /** @param {string} taskId @param {number} timeoutS */
  constructor(taskId, timeoutS) {
    super(`task ${taskId} had not ended after ${timeoutS} s`);
    this.taskId = taskId;
    this.timeoutS = timeoutS;
  }
}

export class WebhookVerificationError extends RelayError {}
