// The operator console's overview: GET /v1/stats every second, drawn as figures and small charts.
// The token comes from the address's #token= fragment (which the browser never sends), or the sign-in form,
// and stays in sessionStorage; a refused one (401) asks again, any other failure shows its detail.

const TOKEN_KEY = "relay:console:token";
const POLL_MS = 1000;
const KEPT_POINTS = 300; // five minutes of one-second samples
const MIN_SPAN_POINTS = 60; // a chart is at least a minute wide

const $ = (id) => document.getElementById(id);
const series = new Map(); // figure -> [number | null], oldest first
let timer = null;
let token = null;

window.consoleState = { polls: 0, errors: [], last: null }; // for tests and the curious

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) {
    sessionStorage.setItem(TOKEN_KEY, fragment);
    window.history.replaceState(null, "", location.pathname + location.search); // out of sight and history
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    begin();
  });
  $("sign-out").addEventListener("click", () => askForToken(""));
  if (token) begin();
  else askForToken("");
}

function askForToken(why) {
  clearTimeout(timer);
  timer = null;
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  $("overview").hidden = true;
  $("sign-out").hidden = true;
  $("scope").hidden = true;
  $("sign-in").hidden = false;
  $("token-error").hidden = !why;
  $("token-error").textContent = why;
  setLive("idle", "not connected");
  $("token").focus();
}

function begin() {
  $("sign-in").hidden = true;
  $("overview").hidden = false;
  $("sign-out").hidden = false;
  series.clear();
  poll();
}

async function poll() {
  timer = null;
  if (!token) return;
  try {
    const response = await fetch("/v1/stats", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      askForToken(`That token was refused: ${body.detail || "unknown token"}.`);
      return;
    }
    if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
    window.consoleState.polls += 1;
    window.consoleState.last = body;
    $("error").hidden = true;
    setLive("live", "live");
    show(body);
  } catch (error) {
    const text = error instanceof TypeError ? `the API cannot be reached (${error.message})` : error.message;
    window.consoleState.errors.push(text);
    $("error").hidden = false;
    $("error").textContent = `GET /v1/stats failed: ${text}. Trying again every second.`;
    setLive("error", "not answering");
  }
  if (token) timer = setTimeout(poll, POLL_MS);
}

function setLive(state, text) {
  $("live").dataset.state = state;
  $("live-text").textContent = text;
}

const number = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat("en");

function rate(value) {
  return value === null || value === undefined ? "–" : number.format(value);
}

function show(stats) {
  const scope = $("scope");
  scope.hidden = false;
  scope.textContent = stats.tenant === null ? "every tenant" : `tenant ${stats.tenant}`;
  const r = stats.rates;
  const latency = r && r.latency.delivered ? r.latency : stats.latency;
  figure("submitted", rate(r?.tasks_submitted), r?.tasks_submitted ?? null);
  figure("ended", rate(r?.tasks_ended), r?.tasks_ended ?? null);
  figure("deliveries", rate(r?.deliveries), r?.deliveries ?? null);
  figure("failures", rate(r?.webhook_failures), r?.webhook_failures ?? null);
  figure(
    "latency",
    latency.p50_ms === null ? "–" : `${number.format(latency.p50_ms)} / ${number.format(latency.p99_ms)}`,
    latency.p99_ms,
  );
  figure("owed", `${whole.format(stats.webhooks.owed)} · ${whole.format(stats.webhooks.held)}`, stats.webhooks.owed);
  figure("dead", whole.format(stats.dead_letters.stored), stats.dead_letters.stored);
  const queue = stats.queue_depth === null ? "–" : whole.format(stats.queue_depth);
  figure("queue", `${queue} · ${whole.format(stats.tasks.open)}`, stats.queue_depth ?? stats.tasks.open);
  $("v-failures").closest(".tile").dataset.alarm = String((r?.webhook_failures ?? 0) > 0);
  $("v-dead").closest(".tile").dataset.alarm = String(stats.dead_letters.stored > 0);
  list("destinations", stats.destinations, ["open", "paused", "degraded", "healthy"]);
  list("reasons", stats.dead_letters.by_reason, ["retries_exhausted", "endpoint_gone", "forbidden_address"]);
  const t = stats.tasks;
  list("tasks", { open: t.open, submitted: t.submitted, succeeded: t.succeeded, failed: t.failed, cancelled: t.cancelled, retried: t.retried, scheduled: t.scheduled }, [
    "open",
    "submitted",
    "succeeded",
    "failed",
    "cancelled",
    "retried",
    "scheduled",
  ]);
  $("updated").textContent = `Updated ${new Date(stats.at).toLocaleTimeString()}${r ? ` (rates over ${Math.round(r.window_s)} s)` : " (rates once a few seconds are kept)"}.`;
}

function figure(name, text, point) {
  $(`v-${name}`).textContent = text;
  const points = series.get(name) || [];
  points.push(typeof point === "number" ? point : null);
  if (points.length > KEPT_POINTS) points.shift();
  series.set(name, points);
  draw($(`s-${name}`), points);
}

// A polyline over the kept points, scaled to the largest, right-aligned over at least a minute's width (so a page
// just opened shows a line, not a speck); gaps (no figure yet) lie on the baseline.
function draw(line, points) {
  const top = Math.max(1e-9, ...points.filter((p) => p !== null));
  const span = Math.max(MIN_SPAN_POINTS, points.length);
  const step = 300 / (span - 1);
  const offset = (span - points.length) * step;
  line.setAttribute(
    "points",
    points.map((p, i) => `${(offset + i * step).toFixed(1)},${(38 - ((p ?? 0) / top) * 34).toFixed(1)}`).join(" "),
  );
}

function list(id, counts, order) {
  const ul = $(id);
  ul.replaceChildren(
    ...order.map((key) => {
      const li = document.createElement("li");
      li.dataset.key = key;
      li.dataset.zero = String(!counts[key]);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = key.replaceAll("_", " ");
      const value = document.createElement("span");
      value.className = "count";
      value.textContent = whole.format(counts[key] ?? 0);
      li.append(name, value);
      return li;
    }),
  );
}

start();
