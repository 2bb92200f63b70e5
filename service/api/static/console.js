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
  for (const tab of document.querySelectorAll("#tabs button")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  setUpLetters();
  setUpDestinations();
  setUpTasks();
  if (token) begin();
  else askForToken("");
}

function askForToken(why) {
  clearTimeout(timer);
  timer = null;
  sessionStorage.removeItem(TOKEN_KEY);
  const refused = why ? token : null;
  token = null;
  forgetViews();
  if (refused) $("token").value = refused; // to correct a typo in place
  $("overview").hidden = true;
  $("letters").hidden = true;
  $("destinations-view").hidden = true;
  $("tasks-view").hidden = true;
  $("tabs").hidden = true;
  $("sign-out").hidden = true;
  $("scope").hidden = true;
  $("sign-in").hidden = false;
  $("token-error").hidden = !why;
  $("token-error").textContent = why;
  setLive("idle", "not connected");
  $("token").focus();
}

// What one token saw is not shown to the next.
function forgetViews() {
  for (const id of ["letters-rows", "dst-rows", "tasks-rows", "letter-fields", "letter-attempts", "task-fields", "task-timeline", "storage-rows"]) {
    $(id).replaceChildren();
  }
  for (const id of ["letter", "dst-caps", "task", "bulk", "letters-error", "dst-error", "tasks-error", "error", "storage"]) {
    $(id).hidden = true;
  }
  letters.open = null;
  letters.bulk = null;
  letters.total = null;
  $("letters-total").textContent = "";
  dst.byId.clear();
  dst.editing = null;
  tasks.open = null;
  clearTimeout(tasks.refresh);
  window.consoleState.last = null;
  storageReadAt = 0;
}

function begin() {
  $("sign-in").hidden = true;
  $("tabs").hidden = false;
  $("sign-out").hidden = false;
  showView("overview");
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

function showView(view) {
  for (const tab of document.querySelectorAll("#tabs button")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  $("overview").hidden = view !== "overview";
  $("letters").hidden = view !== "letters";
  $("destinations-view").hidden = view !== "destinations";
  $("tasks-view").hidden = view !== "tasks";
  // Each visit shows the view as it is now.
  if (view === "letters") loadLetters();
  if (view === "tasks") loadTasks();
  if (view === "destinations") loadDestinations();
}

// A call to the public API with the token: its JSON, or an Error carrying the API's detail (401 asks again).
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const answer = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (response.status === 401) {
    askForToken(`That token was refused: ${answer.detail || "unknown token"}.`);
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${method} ${path.split("?")[0]}: ${answer.detail || response.statusText} (${response.status})`);
  return answer;
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
  $("f-tenant-field").hidden = stats.tenant !== null; // a tenant's key sees its own letters only
  $("d-tenant-field").hidden = stats.tenant !== null;
  $("t-tenant-field").hidden = stats.tenant !== null;
  const r = stats.rates;
  const latency = stats.latency; // of the last few minutes' deliveries, interpolated within the histogram's buckets
  figure("submitted", rate(r?.tasks_submitted), r?.tasks_submitted ?? null);
  figure("ended", rate(r?.tasks_ended), r?.tasks_ended ?? null);
  figure("deliveries", rate(r?.deliveries), r?.deliveries ?? null);
  figure("failures", rate(r?.webhook_failures), r?.webhook_failures ?? null);
  figure(
    "latency",
    latency.p50_ms === null ? "–" : `${number.format(latency.p50_ms)} / ${number.format(latency.p99_ms)}`,
    latency.p99_ms,
  );
  $("n-latency").textContent = latencyNote(latency);
  figure("owed", `${whole.format(stats.webhooks.owed)} · ${whole.format(stats.webhooks.held)}`, stats.webhooks.owed);
  figure("dead", whole.format(stats.dead_letters.stored), stats.dead_letters.stored);
  const queue = stats.queue_depth === null ? "–" : whole.format(stats.queue_depth);
  figure("queue", `${queue} · ${whole.format(stats.tasks.open)}`, stats.queue_depth ?? stats.tasks.open);
  $("v-failures").closest(".tile").dataset.alarm = String((r?.webhook_failures ?? 0) > 0);
  $("v-dead").closest(".tile").dataset.alarm = String(stats.dead_letters.stored > 0);
  $("v-owed").closest(".tile").dataset.alarm = String(stats.webhooks.held > 0);
  list("destinations", stats.destinations, ["open", "paused", "degraded", "healthy"]);
  list("reasons", stats.dead_letters.by_reason, ["retries_exhausted", "endpoint_gone", "forbidden_address"]);
  const t = stats.tasks;
  const counted = { "open now": t.open, submitted: t.submitted, succeeded: t.succeeded, failed: t.failed };
  Object.assign(counted, { cancelled: t.cancelled, retried: t.retried, scheduled: t.scheduled });
  list("tasks", counted, [
    "open now",
    "submitted",
    "succeeded",
    "failed",
    "cancelled",
    "retried",
    "scheduled",
  ]);
  if (stats.tenant === null && Date.now() - storageReadAt > STORAGE_EVERY_MS) loadStorage();
  $("updated").textContent = `Updated ${utc(stats.at).slice(11)}${r ? ` (rates over ${Math.round(r.window_s)} s)` : " (rates once a few seconds are kept)"}.`;
}

// The storage's nodes and the processes alive (GET /v1/ops/cluster, an operator's): read every few seconds.
const STORAGE_EVERY_MS = 5000;
let storageReadAt = 0;

async function loadStorage() {
  storageReadAt = Date.now();
  let view;
  try {
    view = await api("GET", "/v1/ops/cluster");
  } catch {
    $("storage").hidden = true; // not an operator's token, or not answering: the figures above say enough
    return;
  }
  $("storage").hidden = false;
  const masters = view.nodes.filter((n) => n.role === "master").length;
  const down = view.nodes.filter((n) => !n.up).length;
  $("storage-summary").textContent =
    `${view.mode}: ${masters} master${masters === 1 ? "" : "s"}, ${view.nodes.length - masters} replicas, ` +
    `${view.partitions} partition${view.partitions === 1 ? "" : "s"}${down ? `, ${down} down` : ""}`;
  const rows = $("storage-rows");
  rows.replaceChildren();
  for (const n of view.nodes) {
    const row = document.createElement("tr");
    row.dataset.up = String(n.up);
    const master = n.role === "master";
    const cells = [
      td(master ? n.address : `└ ${n.address}`),
      td(n.up ? n.role : `${n.role} down`, n.up ? "" : "bad"),
      td(master ? whole.format(n.slots) : "", "num"),
      td(master ? whole.format(n.partitions) : "", "num"),
      td(n.keys === null ? "–" : whole.format(n.keys), "num"),
      td(n.memory_bytes === null ? "–" : `${(n.memory_bytes / 1048576).toFixed(1)} MB`, "num"),
      td(n.commands_per_s === null ? "–" : whole.format(n.commands_per_s), "num"),
      td(master ? (n.owed_tasks === null ? "–" : whole.format(n.owed_tasks)) : "", "num"),
      td(master ? (n.owed_webhooks === null ? "–" : whole.format(n.owed_webhooks)) : "", "num"),
    ];
    row.append(...cells);
    rows.append(row);
    labelCells(row);
  }
  $("storage-processes").textContent =
    `Workers alive: ${alive(view.workers)}. API processes alive: ${alive(view.api_nodes)}. ` +
    "Each partition of Relay's keyspace lives in one slot; tasks and webhooks owed are counted in the partitions a master holds.";
}

// How many processes are alive; null when the master holding their heartbeats does not answer.
function alive(ids) {
  return ids === null ? "unknown (the master holding the heartbeats does not answer)" : whole.format(ids.length);
}

// What the latency figures are: of which deliveries, over which span (the API keeps about five minutes).
function latencyNote(latency) {
  const span = latency.window_s ? duration(latency.window_s) : null;
  if (!span) return "from an event to its delivery, once a few seconds are kept";
  if (!latency.delivered) return `no deliveries in the last ${span}`;
  const n = whole.format(latency.delivered);
  return `${n} deliver${latency.delivered === 1 ? "y" : "ies"} in the last ${span}, event to 2xx or ack`;
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  return s % 60 === 0 || s >= 240 ? `${Math.round(s / 60)} min` : `${Math.floor(s / 60)} min ${s % 60} s`;
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

// Dead letters: the list by filter, one letter with its event and attempts, replay and delete, one or by filter.

const letters = {
  rows: "letters-rows", more: "letters-more", empty: "letters-empty", error: "letters-error", // its table, Load more, none-match line, banner
  cursor: null,
  open: null,
  bulk: null,
  total: null, // how many letters the filters match (null: not known)
};

function setUpLetters() {
  $("letters-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadLetters();
  });
  $("letters-more").addEventListener("click", () => loadLetters({ more: true }));
  $("letter-replay").addEventListener("click", () => replayOne());
  $("letter-close").addEventListener("click", () => closeLetter());
  $("letter-delete").addEventListener("click", () => deleteOne());
  $("bulk-replay").addEventListener("click", () => startBulk("replay"));
  $("bulk-purge").addEventListener("click", () => startBulk("delete"));
  $("bulk-cancel").addEventListener("click", () => {
    if (letters.bulk) letters.bulk.stopped = true;
    $("bulk").hidden = true;
  });
  $("bulk-go").addEventListener("click", () => runBulk());
}

function filters() {
  const f = {};
  const reason = $("f-reason").value;
  const tenant = $("f-tenant").value.trim();
  const task = $("f-task").value.trim();
  if (reason) f.reason = reason;
  if (tenant) f.tenant = tenant;
  if (task) f.task_id = task;
  for (const key of ["since", "until"]) {
    const value = utcInput(`f-${key}`);
    if (value) f[key] = value;
  }
  return f;
}

function lettersError(error) {
  showError("letters-error", error);
}

async function loadLetters({ more = false } = {}) {
  if (!more && !timesInOrder("f", "letters-error")) {
    $("letters-rows").replaceChildren();
    $("letters-total").textContent = "";
    $("letters-more").hidden = true;
    return;
  }
  const f = filters();
  const query = new URLSearchParams({ ...f, limit: "50" });
  if (!(await loadPage(letters, "/v1/dead-letters", query, { more, add: addLetterRow }))) {
    $("letters-total").textContent = "";
    return;
  }
  if (!more) letters.total = await countLetters(f);
  showLettersTotal();
}

// How many letters the filters match: the dry run of a bulk replay counts them (without the task filter, which it
// does not take: then the rows are counted, once every page is read). null: not known.
async function countLetters(f) {
  if (f.task_id) return null;
  const body = { dry_run: true };
  for (const key of ["reason", "tenant", "since", "until"]) if (f[key]) body[key] = f[key];
  try {
    return (await api("POST", "/v1/dead-letters/replay", body)).matched;
  } catch {
    return null; // a key that may not replay: the list says how many it shows
  }
}

function showLettersTotal() {
  const shown = $("letters-rows").children.length;
  const all = !letters.cursor;
  const total = letters.total ?? (all ? shown : null);
  let text;
  if (total === null) text = `Showing ${whole.format(shown)}; more match (Load more).`;
  else if (total === 0) text = "";
  else {
    text = `${whole.format(total)} dead letter${total === 1 ? " matches" : "s match"}`;
    text += all && shown >= total ? "." : `; showing ${whole.format(shown)}.`;
  }
  $("letters-total").textContent = text;
  window.consoleState.lettersTotal = total;
}

// A since later than its until matches nothing: say so in the view's banner instead of showing an empty list.
function timesInOrder(prefix, bannerId) {
  const since = utcInput(`${prefix}-since`);
  const until = utcInput(`${prefix}-until`);
  const wrong = since !== null && until !== null && Date.parse(since) > Date.parse(until);
  for (const key of ["since", "until"]) $(`${prefix}-${key}`).setAttribute("aria-invalid", String(wrong));
  if (wrong) {
    showError(bannerId, new Error(`"Since" (${utc(since)}) is after "until" (${utc(until)}): nothing can match. Swap them, or clear one.`));
  }
  return !wrong;
}

function closeLetter() {
  letters.open = null;
  $("letter").hidden = true;
  selectRow("letters-rows", null);
}

// Highlight the row whose item is open (none: null).
function selectRow(rowsId, id) {
  for (const row of $(rowsId).children) row.setAttribute("aria-selected", String(row.dataset.id === id));
}

// A time as "YYYY-MM-DD HH:MM:SSZ" (UTC, as the filters take it).
function utc(rfc3339) {
  return `${new Date(rfc3339).toISOString().slice(0, 19).replace("T", " ")}Z`;
}

// A datetime-local input's value, read as UTC, as RFC 3339 (null when empty).
function utcInput(id) {
  const value = $(id).value;
  return value ? `${value.length === 16 ? `${value}:00` : value}Z` : null;
}

// A failed call's detail in a view's banner (a refused token has already asked for another).
function showError(id, error) {
  if (error.message === "signed out") return;
  $(id).hidden = false;
  $(id).textContent = error.message;
}

// Name and value pairs into a <dl>.
function showFields(id, pairs) {
  $(id).replaceChildren(
    ...pairs.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

// A step of a webhook's delivery that is not an attempt: it became a dead letter, or its dead letter was replayed.
function stepText(step) {
  if (step.step === "dead_lettered") {
    return `webhook dead-lettered · ${(step.reason || "dead").replaceAll("_", " ")} · ${step.dead_letter_id}`;
  }
  if (step.step === "replayed") return `webhook replayed · sent again from ${step.dead_letter_id}`;
  return `webhook ${String(step.step).replaceAll("_", " ")} · ${step.dead_letter_id}`;
}

// One delivery attempt in a line (its status code once, even when its error repeats it).
function attemptText(a) {
  const status = a.status_code === null ? "" : ` ${a.status_code}`;
  const error = a.error && a.error !== `HTTP ${a.status_code}` ? ` · ${a.error}` : "";
  return `${a.channel} #${a.attempt} · ${a.outcome}${status}${error}`;
}

// One page of a list into its table: the first page, or with `more` the one after the view's cursor. A view names
// its table body, its "Load more" button, its "none match" line and its error banner.
async function loadPage(view, path, query, { more, add }) {
  $(view.error).hidden = true;
  if (more && view.cursor) query.set("cursor", view.cursor);
  try {
    const page = await api("GET", `${path}?${query}`);
    if (!more) $(view.rows).replaceChildren();
    for (const item of page.items) add(item);
    view.cursor = page.next_cursor;
    $(view.more).hidden = !page.next_cursor;
    $(view.empty).hidden = $(view.rows).children.length > 0;
    return true;
  } catch (error) {
    showError(view.error, error);
    return false;
  }
}

// Each cell carries its column's name, shown beside it on a phone-sized screen (where the header row is hidden).
function labelCells(row) {
  const heads = row.closest("table")?.querySelectorAll("thead th") ?? [];
  [...row.children].forEach((cell, i) => {
    cell.dataset.label = heads[i]?.textContent ?? "";
  });
}

// Several parts of one cell in one box, so that the cell lays out as one value beside its label.
function cellOf(className, ...parts) {
  const cell = document.createElement("td");
  if (className) cell.className = className;
  const body = document.createElement("span");
  body.className = "cell-body";
  body.append(...parts);
  cell.append(body);
  return cell;
}

function td(text, className) {
  const cell = document.createElement("td");
  cell.textContent = text;
  if (className) cell.className = className;
  return cell;
}

function addLetterRow(letter) {
  const row = document.createElement("tr");
  row.dataset.id = letter.id;
  row.tabIndex = 0;
  row.setAttribute("aria-selected", String(letters.open?.id === letter.id));
  const deadAt = td(utc(letter.dead_at).slice(5), "time");
  deadAt.title = utc(letter.dead_at);
  row.append(
    deadAt,
    td(letter.tenant),
    td(letter.reason.replaceAll("_", " "), `reason reason-${letter.reason}`),
    td(`${letter.event.type.replace("task.", "")} #${letter.event.seq}`),
    td(String(letter.attempts), "num"),
    td(letter.last_error || (letter.last_status_code ? `HTTP ${letter.last_status_code}` : "-"), "error-text"),
    td(letter.task_id, "mono wrap"),
    td(String(letter.replays), "num"),
  );
  row.addEventListener("click", () => openLetter(letter.id));
  row.addEventListener("keydown", (e) => {
    if (e.key === "Enter") openLetter(letter.id);
  });
  $("letters-rows").append(row);
  labelCells(row);
}

async function openLetter(id) {
  try {
    const letter = await api("GET", `/v1/dead-letters/${encodeURIComponent(id)}`);
    letters.open = letter;
    selectRow("letters-rows", letter.id);
    $("letter").hidden = false;
    $("letter-id").textContent = letter.id;
    $("letter-result").textContent = "";
    const fields = [
      ["tenant", letter.tenant],
      ["task", letter.task_id],
      ["url", letter.url],
      ["reason", letter.reason.replaceAll("_", " ")],
      ["attempts", String(letter.attempts)],
      ["last status", letter.last_status_code === null ? "-" : String(letter.last_status_code)],
      ["last error", letter.last_error || "-"],
      ["first attempt", utc(letter.first_attempt_at)],
      ["dead at", utc(letter.dead_at)],
      ["replays", String(letter.replays)],
    ];
    showFields("letter-fields", fields);
    $("letter-event").textContent = JSON.stringify(letter.event, null, 2);
    const { attempts, steps = [] } = await api("GET", `/v1/tasks/${encodeURIComponent(letter.task_id)}/deliveries`);
    const mine = [
      ...attempts.filter((a) => a.event_id === letter.event.id).map((a) => ({ at: a.at, kind: a.outcome, text: attemptText(a) })),
      ...steps.filter((step) => step.event_id === letter.event.id).map((step) => ({ at: step.at, kind: step.step, text: stepText(step) })),
    ].sort((x, y) => new Date(x.at) - new Date(y.at));
    $("letter-attempts").replaceChildren(
      ...mine.map((item) => {
        const li = document.createElement("li");
        li.dataset.outcome = item.kind;
        li.textContent = `${utc(item.at)} · ${item.text}`;
        return li;
      }),
    );
    $("letter").scrollIntoView({ block: "nearest" });
  } catch (error) {
    lettersError(error);
  }
}

async function replayOne() {
  const letter = letters.open;
  if (!letter) return;
  try {
    await api("POST", `/v1/dead-letters/${encodeURIComponent(letter.id)}/replay`);
    $("letter-result").textContent = "Replayed: it is sent again with the same webhook-id, and leaves this list once delivered.";
  } catch (error) {
    lettersError(error);
  }
}

async function deleteOne() {
  const letter = letters.open;
  if (!letter || !window.confirm(`Delete dead letter ${letter.id}? It cannot be replayed afterwards.`)) return;
  try {
    await api("DELETE", `/v1/dead-letters/${encodeURIComponent(letter.id)}`);
    closeLetter();
    document.querySelector(`#letters-rows tr[data-id="${CSS.escape(letter.id)}"]`)?.remove();
    $("letters-empty").hidden = $("letters-rows").children.length > 0;
    if (letters.total) letters.total -= 1;
    showLettersTotal();
  } catch (error) {
    lettersError(error);
  }
}

// Bulk: the dry run's count first, then, once confirmed, each matching letter in turn, with a progress bar.
async function startBulk(action) {
  if (!timesInOrder("f", "letters-error")) return;
  const f = filters();
  const body = { dry_run: true };
  for (const key of ["reason", "tenant", "since", "until"]) if (f[key]) body[key] = f[key];
  try {
    const { matched } = await api("POST", "/v1/dead-letters/replay", body);
    letters.bulk = { action, filter: f, total: matched, done: 0, failed: 0, stopped: false };
    $("bulk").hidden = false;
    bulkBar(0, matched);
    const what = action === "replay" ? "replay" : "delete";
    const narrowed = f.task_id ? " (the task filter is left out: bulk works by reason, tenant and time)" : "";
    $("bulk-text").textContent = matched
      ? `${matched} dead letter${matched === 1 ? "" : "s"} match${narrowed}. ${what === "delete" ? "Deleted letters cannot be replayed." : "Each is sent again with the webhook-id it had."}`
      : "No dead letters match.";
    $("bulk-go").hidden = matched === 0;
    $("bulk-go").textContent = `${what === "replay" ? "Replay" : "Delete"} ${matched}`;
    $("bulk-go").className = what === "replay" ? "primary" : "danger";
  } catch (error) {
    lettersError(error);
  }
}

// The bar, set in the same step as the text beside it.
function bulkBar(done, total) {
  const share = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  $("bulk-bar").style.width = `${share}%`;
  $("bulk-track").setAttribute("aria-valuenow", String(Math.round(share)));
}

async function runBulk() {
  const bulk = letters.bulk;
  if (!bulk) return;
  $("bulk-go").hidden = true;
  const query = new URLSearchParams({ limit: "200" });
  for (const key of ["reason", "tenant", "since", "until"]) if (bulk.filter[key]) query.set(key, bulk.filter[key]);
  const seen = new Set();
  let cursor = null;
  try {
    do {
      if (cursor) query.set("cursor", cursor);
      const page = await api("GET", `/v1/dead-letters?${query}`);
      for (const letter of page.items) {
        if (bulk.stopped || seen.has(letter.id)) continue;
        seen.add(letter.id);
        try {
          if (bulk.action === "replay") await api("POST", `/v1/dead-letters/${encodeURIComponent(letter.id)}/replay`);
          else await api("DELETE", `/v1/dead-letters/${encodeURIComponent(letter.id)}`);
        } catch (error) {
          if (error.message === "signed out") return;
          bulk.failed += 1;
        }
        bulk.done += 1;
        bulkBar(bulk.done, bulk.total);
        $("bulk-text").textContent = `${bulk.action === "replay" ? "Replaying" : "Deleting"}: ${bulk.done} of ${bulk.total}${bulk.failed ? `, ${bulk.failed} failed` : ""}…`;
      }
      cursor = page.next_cursor;
    } while (cursor && !bulk.stopped);
    const verb = bulk.action === "replay" ? "Replayed" : "Deleted";
    let text = `${verb} ${bulk.done - bulk.failed} of ${bulk.total}${bulk.failed ? `; ${bulk.failed} failed (try again)` : ""}.`;
    if (bulk.action === "replay") {
      const stats = await api("GET", "/v1/stats");
      const held = stats.destinations.open + stats.destinations.paused;
      if (held > 0) {
        text += ` ${held} destination${held === 1 ? " is" : "s are"} open or paused: what they hold goes out once they recover or resume (see Destinations); replayed letters leave this list when delivered.`;
      } else {
        text += " They leave this list as they are delivered.";
      }
    }
    bulkBar(bulk.done, bulk.done); // every match is done, however many the dry run counted
    $("bulk-text").textContent = text;
    window.consoleState.bulk = { action: bulk.action, done: bulk.done, failed: bulk.failed };
    loadLetters();
  } catch (error) {
    lettersError(error);
  }
}

// Destinations: worst first, with their state, load and caps; pause, resume and change caps in place.

const dst = {
  rows: "dst-rows", more: "dst-more", empty: "dst-empty", error: "dst-error", // its table, Load more, none-match line, banner
  cursor: null,
  byId: new Map(), // destination id -> its row, to change in place
  editing: null,
};

function setUpDestinations() {
  $("dst-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadDestinations();
  });
  $("dst-more").addEventListener("click", () => loadDestinations({ more: true }));
  $("caps-close").addEventListener("click", () => {
    $("dst-caps").hidden = true;
  });
  $("caps-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveCaps();
  });
}

function dstError(error) {
  showError("dst-error", error);
}

function loadDestinations({ more = false } = {}) {
  const query = new URLSearchParams({ limit: "100" });
  const state = $("d-state").value;
  const tenant = $("d-tenant").value.trim();
  if (state) query.set("state", state);
  if (tenant) query.set("tenant", tenant);
  if (!more) dst.byId.clear();
  return loadPage(dst, "/v1/destinations", query, { more, add: showDestination });
}

function showDestination(d) {
  const row = dst.byId.get(d.id) || document.createElement("tr");
  row.dataset.id = d.id;
  row.dataset.state = d.state;
  const badge = document.createElement("span");
  badge.className = `badge state-${d.state}`;
  badge.textContent = d.state;
  const stateCell = cellOf("", badge);
  if (d.consecutive_failures > 0) {
    const failures = document.createElement("span");
    failures.className = "failures";
    failures.textContent = `${d.consecutive_failures} failed`;
    stateCell.firstChild.append(failures);
  }
  const caps = `${d.max_in_flight} at once${d.rate_per_s === null ? "" : ` · ${number.format(d.rate_per_s)}/s`}`;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = d.state === "paused" ? "primary small" : "quiet";
  toggle.textContent = d.state === "paused" ? "Resume" : "Pause";
  toggle.addEventListener("click", () => pauseOrResume(d, toggle));
  const edit = document.createElement("button");
  edit.type = "button";
  edit.className = "quiet";
  edit.textContent = "Caps…";
  edit.addEventListener("click", () => openCaps(d));
  row.replaceChildren(
    stateCell,
    td(d.origin, "mono wrap"),
    td(d.tenant),
    td(String(d.in_flight), "num"),
    td(String(d.owed), "num"),
    td(d.last_success_at ? utc(d.last_success_at) : "never", "time"),
    lastError(d),
    td(caps),
    cellOf("actions", toggle, edit),
  );
  if (!dst.byId.has(d.id)) $("dst-rows").append(row);
  dst.byId.set(d.id, row);
  row.shown = d;
  reshowWhenTheWaitEnds(d, row);
  labelCells(row);
}

function lastError(d) {
  if (!d.last_error) return td("-");
  const recent = !d.last_success_at || (d.last_failure_at && d.last_failure_at > d.last_success_at);
  const when = d.last_failure_at ? ` at ${utc(d.last_failure_at).slice(11)}` : "";
  const probe = nextProbe(d);
  return td(`${d.last_error}${when}${probe ? ` · ${probe}` : ""}`, recent ? "error-text" : "muted-text");
}

// When an open destination probes (as `relay destinations show` says it): with nothing owed there is nothing to
// probe with, so once its wait is over it waits for the next webhook owed, which is sent at once.
function nextProbe(d, now = Date.now()) {
  if (d.state !== "open" || !d.next_probe_at) return "";
  const at = utc(d.next_probe_at).slice(11);
  if (d.owed === 0) {
    if (new Date(d.next_probe_at).getTime() <= now) {
      return `waiting for a webhook to probe with (its wait ended at ${at}; the next one owed probes at once)`;
    }
    return `next probe ${at}, with the next webhook owed (none is owed now)`;
  }
  if (d.in_flight > 0) return "a probe is in flight";
  return `next probe ${at}`;
}

// A row that says "next probe" with nothing owed is shown again when that wait ends, so it does not keep a time
// that has passed (the row must still be this destination's, from the same answer).
function reshowWhenTheWaitEnds(d, row) {
  clearTimeout(row.probeTimer);
  if (d.state !== "open" || !d.next_probe_at || d.owed !== 0) return;
  const left = new Date(d.next_probe_at).getTime() - Date.now();
  if (left < 0) return;
  row.probeTimer = setTimeout(() => {
    if (dst.byId.get(d.id) === row && row.shown === d) showDestination(d);
  }, left + 50);
}

async function pauseOrResume(d, button) {
  button.disabled = true;
  try {
    const op = d.state === "paused" ? "resume" : "pause";
    showDestination(await api("POST", `/v1/destinations/${encodeURIComponent(d.id)}/${op}`));
  } catch (error) {
    dstError(error);
    button.disabled = false;
  }
}

function openCaps(d) {
  dst.editing = d;
  $("dst-caps").hidden = false;
  $("caps-origin").textContent = `${d.origin} (${d.tenant})`;
  $("caps-max").value = String(d.max_in_flight);
  $("caps-rate").value = d.rate_per_s === null ? "" : String(d.rate_per_s);
  $("caps-result").textContent = "";
  $("dst-caps").scrollIntoView({ block: "nearest" });
}

async function saveCaps() {
  const d = dst.editing;
  if (!d) return;
  const rate = $("caps-rate").value.trim();
  const body = { max_in_flight: Number($("caps-max").value), rate_per_s: rate === "" ? null : Number(rate) };
  try {
    const changed = await api("PATCH", `/v1/destinations/${encodeURIComponent(d.id)}`, body);
    showDestination(changed);
    dst.editing = changed;
    $("caps-result").textContent = `Saved: at most ${changed.max_in_flight} at once${changed.rate_per_s === null ? ", no rate" : `, ${changed.rate_per_s}/s`}.`;
  } catch (error) {
    $("caps-result").textContent = error.message;
  }
}

// Tasks: find one by id or by the list's filters; its events and every delivery attempt on one timeline; cancel.

const tasks = {
  rows: "tasks-rows", more: "tasks-more", empty: "tasks-empty", error: "tasks-error", // its table, Load more, none-match line, banner
  cursor: null,
  open: null,
  refresh: null, // the next refresh of the open task, while it runs
};

function setUpTasks() {
  $("task-find").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("t-id").value.trim();
    if (id) openTask(id);
  });
  $("tasks-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadTasks();
  });
  $("tasks-more").addEventListener("click", () => loadTasks({ more: true }));
  $("task-cancel").addEventListener("click", () => cancelTask());
  $("task-refresh").addEventListener("click", () => tasks.open && openTask(tasks.open.id));
  $("task-close").addEventListener("click", () => {
    tasks.open = null;
    clearTimeout(tasks.refresh);
    $("task").hidden = true;
    selectRow("tasks-rows", null);
  });
}

function tasksError(error) {
  showError("tasks-error", error);
}

function loadTasks({ more = false } = {}) {
  if (!more && !timesInOrder("t", "tasks-error")) {
    $("tasks-rows").replaceChildren();
    $("tasks-more").hidden = true;
    return;
  }
  const query = new URLSearchParams({ limit: "25" });
  for (const [key, id] of [["status", "t-status"], ["kind", "t-kind"], ["tenant", "t-tenant"]]) {
    const value = $(id).value.trim();
    if (value) query.set(key, value);
  }
  for (const key of ["since", "until"]) {
    const value = utcInput(`t-${key}`);
    if (value) query.set(key, value);
  }
  return loadPage(tasks, "/v1/tasks", query, { more, add: addTaskRow });
}

function addTaskRow(task) {
  const row = document.createElement("tr");
  row.dataset.id = task.id;
  row.tabIndex = 0;
  row.setAttribute("aria-selected", String(tasks.open?.id === task.id));
  const badge = document.createElement("span");
  badge.className = `badge task-${task.status}`;
  badge.textContent = task.status;
  const status = document.createElement("td");
  status.append(badge);
  row.append(td(utc(task.created_at).slice(5), "time"), status, td(task.kind), td(String(task.attempt), "num"), td(task.id, "mono wrap"));
  row.addEventListener("click", () => openTask(task.id));
  row.addEventListener("keydown", (e) => e.key === "Enter" && openTask(task.id));
  $("tasks-rows").append(row);
  labelCells(row);
}

// Every page of a task's events (next_after_seq is null on the last).
async function taskEvents(path) {
  const events = [];
  for (let after = 0; after !== null; ) {
    const page = await api("GET", `${path}/events?after_seq=${after}`);
    events.push(...page.events);
    after = page.events.length ? page.next_after_seq : null;
  }
  return events;
}

async function openTask(id) {
  $("tasks-error").hidden = true;
  try {
    const path = `/v1/tasks/${encodeURIComponent(id)}`;
    const task = await api("GET", path); // first alone: an unknown id is one 404
    const [events, { attempts, steps = [] }] = await Promise.all([taskEvents(path), api("GET", `${path}/deliveries`)]);
    tasks.open = task;
    selectRow("tasks-rows", task.id);
    $("task").hidden = false;
    $("task-id").textContent = task.id;
    $("task-status").textContent = task.status;
    $("task-status").className = `badge task-${task.status}`;
    $("task-result").textContent = "";
    const ended = ["succeeded", "failed", "cancelled"].includes(task.status);
    $("task-cancel").hidden = ended;
    const outcome = task.error ? `${task.error.type}: ${task.error.message}` : JSON.stringify(task.result);
    const fields = [
      ["kind", task.kind],
      ["attempt", String(task.attempt)],
      ["created", utc(task.created_at)],
      ["started", task.started_at ? utc(task.started_at) : "-"],
      ["finished", task.finished_at ? utc(task.finished_at) : "-"],
      ["run at", task.run_at ? utc(task.run_at) : "-"],
      ["webhook", task.webhook ? `${task.webhook.url} (${task.webhook.events.join(", ")})` : "-"],
      ["websocket", task.websocket ? "yes" : "no"],
      ["progress", task.progress ? `${task.progress.percent}% ${task.progress.message || ""}` : "-"],
      [task.error ? "error" : "result", ended && task.status !== "cancelled" ? outcome : "-"],
    ];
    showFields("task-fields", fields);
    const seqOf = new Map(events.map((e) => [e.id, e.seq]));
    const items = [
      ...events.map((e) => ({ at: e.created_at, kind: "event", text: `event #${e.seq} ${e.type.replace("task.", "")} ${JSON.stringify(e.data)}` })),
      ...attempts.map((a) => ({
        at: a.at,
        kind: a.outcome,
        text: `${attemptText(a)} (event #${seqOf.get(a.event_id) ?? "?"})`,
      })),
      // After the attempts, so that a step at the same time as an attempt comes after it (the sort is stable).
      ...steps.map((step) => ({ at: step.at, kind: step.step, text: `${stepText(step)} (event #${seqOf.get(step.event_id) ?? "?"})` })),
    ].sort((x, y) => new Date(x.at) - new Date(y.at));
    $("task-timeline").replaceChildren(
      ...items.map((item) => {
        const li = document.createElement("li");
        li.dataset.outcome = item.kind;
        li.textContent = `${utc(item.at).slice(11)} · ${item.text}`;
        return li;
      }),
    );
    $("task").scrollIntoView({ block: "nearest" });
    clearTimeout(tasks.refresh);
    if (!ended) tasks.refresh = setTimeout(() => tasks.open?.id === task.id && !$("tasks-view").hidden && openTask(task.id), 2000);
  } catch (error) {
    tasksError(error);
  }
}

async function cancelTask() {
  const task = tasks.open;
  if (!task || !window.confirm(`Cancel task ${task.id}? It ends cancelled and its run stops.`)) return;
  try {
    const answer = await api("POST", `/v1/tasks/${encodeURIComponent(task.id)}/cancel`);
    $("task-result").textContent = `Cancelled: ${answer.id} is ${answer.status}; its final event is delivered like any other.`;
    await openTask(task.id);
    $("task-result").textContent = `Cancelled: ${answer.id} is ${answer.status}; its final event is delivered like any other.`;
  } catch (error) {
    $("task-result").textContent = error.message;
  }
}

// Last, once every view's state above exists: start() may sign out at once (no token yet), which clears them all.
start();
