// Verifying a webhook from Relay (Standard Webhooks, https://www.standardwebhooks.com/), on Web Crypto alone, so that
// it runs in Node 20+, Deno, Bun, Cloudflare Workers and browsers alike.
//
// Relay signs `${webhook-id}.${webhook-timestamp}.${body}` with HMAC-SHA256 under each live secret and sends
// `webhook-signature: v1,<base64> [v1,<base64>]` (two while a secret is being rotated). A request verifies when any
// v1 signature matches under any secret given, and its timestamp is within `toleranceS` of now either way (an old
// request replayed, or one stamped ahead, is refused). The comparison is crypto.subtle.verify's, which takes the
// same time wherever the bytes differ.

import { WebhookVerificationError } from "./errors.js";

// Seconds a webhook's timestamp may be from now, either way, as in the Standard Webhooks libraries.
export const DEFAULT_TOLERANCE_S = 300;

// The most signatures one webhook-signature header may carry. Relay sends one, two while a secret is rotated; each
// costs an HMAC per secret, so a header of thousands (a few hundred kB) would cost seconds of CPU per request.
export const MAX_SIGNATURES = 16;

const SECRET_PREFIX = "whsec_";
const encoder = new TextEncoder();

/**
 * Check a webhook's signature and timestamp and return its Event.
 *
 * @param {string | Uint8Array | ArrayBuffer} body the request body exactly as received (not parsed and re-encoded)
 * @param {Headers | Record<string, string | string[] | undefined> | Map<string, string>} headers the request headers
 * @param {string | string[]} secret `whsec_…` (GET /v1/signing-secret); during a rotation, both secrets
 * @param {{toleranceS?: number, now?: () => number}} [options] `now` gives the time in milliseconds (tests)
 * @returns {Promise<object>} the Event
 */
export async function verifyWebhook(body, headers, secret, { toleranceS = DEFAULT_TOLERANCE_S, now = Date.now } = {}) {
  // NaN or a string would make both comparisons below false, and Infinity both true: either lets a webhook of any age
  // through.
  if (typeof toleranceS !== "number" || !Number.isFinite(toleranceS) || toleranceS < 0) {
    throw new TypeError("toleranceS must be a finite number >= 0");
  }
  const msgId = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!msgId || !timestamp || !signatures) {
    throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header");
  }
  if (!/^\d+$/.test(timestamp.trim())) throw new WebhookVerificationError("webhook-timestamp is not unix seconds");
  const sentS = Number(timestamp.trim());
  const nowS = Math.floor(now() / 1000);
  if (sentS < nowS - toleranceS) throw new WebhookVerificationError("webhook-timestamp is too old");
  if (sentS > nowS + toleranceS) throw new WebhookVerificationError("webhook-timestamp is in the future");

  const bodyBytes = bytesOf(body);
  const prefix = encoder.encode(`${msgId}.${timestamp.trim()}.`);
  const signed = new Uint8Array(prefix.length + bodyBytes.length);
  signed.set(prefix);
  signed.set(bodyBytes, prefix.length);

  const parts = signatures.split(" ").filter((part) => part !== "");
  if (parts.length > MAX_SIGNATURES) {
    throw new WebhookVerificationError(
      `webhook-signature carries ${parts.length} signatures, more than ${MAX_SIGNATURES}`,
    );
  }
  const given = [];
  for (const part of parts) {
    const [version, encoded] = part.split(",", 2);
    if (version !== "v1" || !encoded) continue; // another scheme (v1a) or noise: not ours to judge
    const decoded = base64Bytes(encoded);
    if (decoded !== null) given.push(decoded);
  }
  const secrets = Array.isArray(secret) ? secret : [secret];
  if (secrets.length === 0) throw new WebhookVerificationError("no secret to verify with");
  const keys = secrets.map(secretBytes); // every secret checked before any is used: a bad one is said at once
  for (const one of keys) {
    const key = await crypto.subtle.importKey("raw", one, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    for (const signature of given) {
      if (await crypto.subtle.verify("HMAC", key, signature, signed)) return parseEvent(bodyBytes);
    }
  }
  throw new WebhookVerificationError("no signature matches (another secret, or a body changed on the way)");
}

function parseEvent(bytes) {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new WebhookVerificationError("the signed body is not JSON");
  }
}

// Header names are case-insensitive: a Headers, a Map or Node's plain object (req.headers), whatever their case.
function header(headers, name) {
  if (!headers) return null;
  const entries = typeof headers.entries === "function" ? headers.entries() : Object.entries(headers);
  for (const [key, value] of entries) {
    if (key.toLowerCase() !== name) continue;
    if (value === undefined || value === null) return null;
    return Array.isArray(value) ? value.join(" ") : String(value);
  }
  return null;
}

function bytesOf(body) {
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError("the body must be the raw request body: a string, Uint8Array or ArrayBuffer");
}

function secretBytes(secret) {
  if (typeof secret !== "string") throw new TypeError("a webhook secret is a string, whsec_…");
  const key = base64Bytes(secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret);
  // Never the secret itself in the message: errors end up in logs. A WebhookVerificationError, as in the Python
  // client: a receiver's one `catch` answers it, and the message says what to fix.
  if (key === null || key.length === 0) {
    throw new WebhookVerificationError("a secret is not whsec_ followed by base64 (GET /v1/signing-secret gives it)");
  }
  return key;
}

function base64Bytes(text) {
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(padded)) return null;
  try {
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes;
  } catch {
    return null;
  }
}
