// One place where requests leave: the bearer token, the timeouts, the retries, and the translation of what comes back
// (or of nothing coming back) into the error tree of errors.js.
//
// What is retried, and why it is safe: a submission always carries an Idempotency-Key, the same on every try, so a
// retry of one that was stored returns that task rather than a second one; reads change nothing. Both are retried on
// no answer, 429 and 503, with exponential backoff and jitter, never sooner than Retry-After. Nothing else is retried
// (a replay or a rotation sent twice would be done twice).

import { RelayError, RequestTimeoutError, TransportError, UnexpectedAnswerError, apiErrorClass } from "./errors.js";

// Seconds a request may take before it counts as unanswered (a stream: until its headers arrive).
export const DEFAULT_TIMEOUT_S = 30;
// Tries after the first for a request that may be retried.
export const DEFAULT_MAX_RETRIES = 8;
// The first backoff's ceiling, doubling on each retry up to DEFAULT_RETRY_MAX_DELAY_S (jitter: half to all of it).
export const DEFAULT_RETRY_BASE_DELAY_S = 0.5;
// The longest one wait between two tries; a Retry-After longer than this is not waited for (the error says it).
export const DEFAULT_RETRY_MAX_DELAY_S = 30;
// The most bytes of one answer read into memory. Relay's largest (a page of tasks, about 4 MB; a task's result) stay
// far below it; what goes past it is not Relay's (a proxy's download, a hostile host) and must not exhaust memory.
export const DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024;
// The most bytes of an error answer kept: its detail is all that is shown of it.
export const MAX_ERROR_BYTES = 64 * 1024;

const RETRY_STATUSES = new Set([429, 503]);

export class Transport {
  // Private: neither console.log, util.inspect nor JSON.stringify of a client (or of a list it made) shows the key.
  #token;

  /**
   * @param {string} baseUrl Relay's base URL
   * @param {string} token an API key or the admin token
   * @param {object} options see RelayOptions in index.d.ts
   */
  constructor(baseUrl, token, options = {}) {
    if (!baseUrl) throw new TypeError("Relay needs its base URL, such as http://127.0.0.1:8000");
    if (!token) throw new TypeError("Relay needs an API key or an admin token");
    this.baseUrl = checkedBaseUrl(baseUrl);
    this.#token = String(token);
    const {
      fetch: fetchImpl = globalThis.fetch,
      timeout = DEFAULT_TIMEOUT_S,
      maxRetries = DEFAULT_MAX_RETRIES,
      retryBaseDelay = DEFAULT_RETRY_BASE_DELAY_S,
      retryMaxDelay = DEFAULT_RETRY_MAX_DELAY_S,
      headers = {},
      random = Math.random,
      maxAnswerBytes = DEFAULT_MAX_ANSWER_BYTES,
    } = options;
    if (typeof fetchImpl !== "function") throw new TypeError("no fetch here: pass options.fetch");
    for (const [name, value] of Object.entries({
      timeout,
      maxRetries,
      retryBaseDelay,
      retryMaxDelay,
      maxAnswerBytes,
    })) {
      if (typeof value !== "number" || !(value >= 0)) throw new TypeError(`options.${name} must be a number >= 0`);
    }
    // Called as a plain function: a browser's fetch refuses to run with another `this`.
    this.fetch = (...args) => fetchImpl(...args);
    this.timeoutS = timeout;
    this.maxRetries = maxRetries;
    this.retryBaseDelayS = retryBaseDelay;
    this.retryMaxDelayS = retryMaxDelay;
    this.headers = headers;
    this.random = random;
    this.maxAnswerBytes = maxAnswerBytes;
  }

  url(path, query) {
    const url = new URL(this.baseUrl + path);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value === undefined || value === null) continue;
      url.searchParams.set(name, value instanceof Date ? value.toISOString() : String(value));
    }
    return url.toString();
  }

  /**
   * A request whose answer is JSON (or nothing, for a 204).
   *
   * @param {string} method
   * @param {string} path
   * @param {{query?: object, body?: unknown, headers?: object, retry?: boolean, signal?: AbortSignal}} [init]
   */
  async request(method, path, { query, body, headers = {}, retry = false, signal } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const url = this.url(path, query);
    const startedMs = Date.now();
    for (let attempt = 0; ; attempt += 1) {
      let response;
      let text;
      try {
        response = await this.send(url, init, signal, { wholeBody: true });
        text = response.text;
      } catch (error) {
        if (!(error instanceof TransportError) || !retry) throw error;
        if (attempt >= this.maxRetries) throw gaveUp(error, attempt + 1, startedMs);
        await sleep(this.backoffS(attempt, null), signal);
        continue;
      }
      if (response.ok) {
        if (response.status === 204 || text === "") return undefined;
        try {
          return JSON.parse(text);
        } catch {
          throw new UnexpectedAnswerError(
            `${method} ${path} answered ${response.status} with no JSON: ${text.slice(0, 200)}`,
          );
        }
      }
      const error = apiError(response, text, method, path);
      if (retry && RETRY_STATUSES.has(response.status) && attempt < this.maxRetries) {
        const waitS = this.backoffS(attempt, error.retryAfterS);
        if (waitS !== null) {
          await sleep(waitS, signal);
          continue;
        }
      }
      throw error;
    }
  }

  /**
   * Open a streamed GET: the Response once its headers are in (the timeout covers only that); the caller reads the
   * body and aborts `signal` when done with it.
   */
  async open(path, { query, headers = {}, signal } = {}) {
    return this.send(this.url(path, query), { method: "GET", headers }, signal, { wholeBody: false });
  }

  /** One try: the Response (with its whole body as `text` when asked), or a TransportError. */
  async send(url, init, signal, { wholeBody }) {
    signal?.throwIfAborted();
    const timer = new AbortController();
    const timeout = setTimeout(() => timer.abort(), this.timeoutS * 1000);
    const onAbort = () => timer.abort(signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    let streaming = false; // a streamed body stays tied to `signal`: aborting it closes the connection
    try {
      const response = await this.fetch(url, {
        ...init,
        headers: { Authorization: `Bearer ${this.#token}`, ...this.headers, ...init.headers },
        signal: timer.signal,
        // Relay never redirects: one that does is a misconfigured URL or someone else's host, which must not get the
        // request's body (a submission's input) or hand back an answer of its own.
        redirect: "manual",
      });
      if (response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400)) {
        response.body?.cancel().catch(() => {});
        const location = response.headers.get("location");
        throw new UnexpectedAnswerError(
          `${init.method} ${url} answered a redirect${location ? ` to ${location}` : ""}, which Relay never sends:` +
            " is this Relay's URL?",
        );
      }
      if (!wholeBody) {
        streaming = true;
        return response;
      }
      const limit = response.ok ? this.maxAnswerBytes : MAX_ERROR_BYTES;
      const text = await readText(response, limit, !response.ok, `${init.method} ${url}`);
      return { ok: response.ok, status: response.status, headers: response.headers, text };
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      if (error instanceof RelayError) throw error;
      if (timer.signal.aborted) {
        throw new RequestTimeoutError(`${init.method} ${url}: no answer within ${this.timeoutS} s`, { cause: error });
      }
      throw new TransportError(`${init.method} ${url}: ${describe(error)}`, { cause: error });
    } finally {
      clearTimeout(timeout);
      if (!streaming) signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * How long to wait before try `attempt + 1`: exponential with jitter, never less than Retry-After; null when
   * Retry-After asks for longer than the longest wait (then the error is the caller's to see).
   */
  backoffS(attempt, retryAfterS) {
    const ceilingS = Math.min(this.retryMaxDelayS, this.retryBaseDelayS * 2 ** attempt);
    // Half to all of the ceiling: clients that failed together do not come back together, and never at once.
    const jitteredS = ceilingS / 2 + (this.random() * ceilingS) / 2;
    if (retryAfterS === null || retryAfterS === undefined) return jitteredS;
    if (retryAfterS > this.retryMaxDelayS) return null;
    return Math.max(jitteredS, retryAfterS);
  }
}

/**
 * The body of `response` as text, reading at most `limitBytes`: past it, an UnexpectedAnswerError (or, with
 * `truncate`, the text so far, for an error answer whose start is its detail). The connection is closed either way.
 */
export async function readText(response, limitBytes, truncate, what) {
  if (response.body === null) return "";
  const declared = Number(response.headers.get("content-length"));
  if (!truncate && declared > limitBytes) {
    response.body.cancel().catch(() => {});
    throw tooLarge(what, limitBytes);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let bytes = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return text + decoder.decode();
      bytes += value.byteLength;
      if (bytes > limitBytes) {
        if (!truncate) throw tooLarge(what, limitBytes);
        return text + decoder.decode(value.subarray(0, value.byteLength - (bytes - limitBytes)));
      }
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function tooLarge(what, limitBytes) {
  return new UnexpectedAnswerError(
    `${what} answered more than ${limitBytes} bytes (maxAnswerBytes): not Relay's answer`,
  );
}

/** The TransportError of the last try, saying how many were made and for how long. */
function gaveUp(error, tries, startedMs) {
  if (tries <= 1) return error;
  const seconds = ((Date.now() - startedMs) / 1000).toFixed(0);
  const Class = error.constructor;
  return new Class(`${error.message} (no answer in ${tries} tries over ${seconds} s)`, { cause: error.cause ?? error });
}

/** `url` without its trailing slashes, once it is known to be an http or https URL (else a TypeError that says so). */
function checkedBaseUrl(baseUrl) {
  let url;
  try {
    url = new URL(String(baseUrl));
  } catch {
    url = null;
  }
  if (url === null || (url.protocol !== "http:" && url.protocol !== "https:")) {
    throw new TypeError(`Relay needs an http:// or https:// base URL, such as http://127.0.0.1:8000; got ${baseUrl}`);
  }
  return String(baseUrl).replace(/\/+$/, "");
}

/** The ApiError for an error answer, with Relay's `detail` (or the body's start when it is not Relay's JSON). */
export function apiError(response, text, method, path) {
  let body = null;
  let detail = text.slice(0, 500) || `HTTP ${response.status}`;
  try {
    body = JSON.parse(text);
    if (body && typeof body.detail === "string") detail = body.detail;
  } catch {
    // not JSON: a proxy's page, say; its start is the detail
  }
  const retryAfterS = parseRetryAfter(response.headers.get("retry-after"));
  const ErrorClass = apiErrorClass(response.status);
  return new ErrorClass(response.status, detail, { body, retryAfterS, method, path });
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value) {
  if (value === null || value === undefined || value.trim() === "") return null;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  // An HTTP date names its weekday; a bare "-5" or "1e3" is neither form, though Date.parse would read some of them.
  if (!/^[A-Za-z]/.test(text)) return null;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

/** Wait `seconds`, or until `signal` aborts (then its reason is thrown). */
export function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, seconds * 1000);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function describe(error) {
  // Node's fetch says "fetch failed" and keeps the reason (ECONNREFUSED, a reset) in its cause.
  const cause = error?.cause;
  const why = cause?.code ?? cause?.message;
  return why ? `${error.message} (${why})` : String(error?.message ?? error);
}
