// The demo page: submit a task, follow it with RelayClient, show every event and what the connection did.
import { RelayClient } from "/static/relay.js";

const KEY_STORE = "relay-demo:key"; // localStorage: the API key survives the tab
const RECENT_STORE = "relay-demo:tasks"; // sessionStorage: tasks this tab followed, so a reload resumes
const RECENT_MAX = 6;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"),
  key: $("api-key"),
  seconds: $("seconds"),
  echoInput: $("echo-input"),
  failMessage: $("fail-message"),
  run: $("run"),
  formError: $("form-error"),
  conn: $("conn"),
  connText: $("conn-text"),
  channel: $("conn-channel"),
  taskId: $("task-id"),
  taskStatus: $("task-status"),
  progress: $("progress"),
  bar: $("bar"),
  percent: $("percent"),
  progressMessage: $("progress-message"),
  outcome: $("outcome"),
  statEvents: $("stat-events"),
  statReconnects: $("stat-reconnects"),
  statOrder: $("stat-order"),
  cut: $("cut"),
  cancel: $("cancel"),
  log: $("log"),
  logWrap: $("log-wrap"),
  logEmpty: $("log-empty"),
  recent: $("recent"),
  recentEmpty: $("recent-empty"),
};

// For tests and the curious: every event onEvent got, and every status the client reported.
window.relayEvents = [];
window.relayStatuses = [];

const relay = new RelayClient(location.origin, { onStatus: onStatus });
window.relay = relay;

let current = null; // {id, token, kind}
let reconnects = 0;

// The API key: from the URL fragment (`relay serve` prints a link with #key=...), else remembered. The link may be
// opened in a tab already on this page: the browser then changes only the fragment, so it is read on every change.

function initKey() {
  ui.key.value = keyFromFragment() || recall(localStorage, KEY_STORE) || "";
  ui.key.addEventListener("change", () => remember(localStorage, KEY_STORE, ui.key.value.trim()));
  window.addEventListener("hashchange", () => {
    const key = keyFromFragment();
    if (!key) return;
    ui.key.value = key;
    ui.formError.hidden = true;
  });
}

function keyFromFragment() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (key) {
    remember(localStorage, KEY_STORE, key);
    history.replaceState(null, "", location.pathname + location.search); // keep the key out of the address bar
  }
  return key;
}

// The kinds this Relay runs, built in and added (RELAY_TASK_MODULES): the OpenAPI document names them all as the
// enum of a submission's kind. Those the picker lacks are added to it; their input is JSON.
async function addKinds() {
  try {
    const response = await fetch("/schema/openapi.json", { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const spec = await response.json();
    const kinds = spec?.components?.schemas?.TaskSubmission?.properties?.kind?.enum;
    if (!Array.isArray(kinds)) return;
    const shown = new Set([...ui.form.querySelectorAll('input[name="kind"]')].map((input) => input.value));
    for (const kind of kinds) {
      if (typeof kind !== "string" || shown.has(kind)) continue;
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "kind";
      input.value = kind;
      const name = document.createElement("span");
      name.textContent = kind;
      label.append(input, name);
      $("kinds").append(label);
      shown.add(kind);
    }
  } catch {
    // the picker keeps the built-in kinds
  }
}

// Submitting.

function selectedKind() {
  return ui.form.querySelector('input[name="kind"]:checked').value;
}

const OWN_FIELDS = new Set(["sleep", "echo", "fail"]); // kinds with a field of their own; the others take JSON

function showKindFields() {
  const kind = selectedKind();
  const wanted = OWN_FIELDS.has(kind) ? kind : "any";
  for (const field of ui.form.querySelectorAll("[data-kind]")) field.hidden = !field.dataset.kind.split(" ").includes(wanted);
}

function taskInput(kind) {
  if (kind === "sleep") return { seconds: Number(ui.seconds.value) };
  if (kind === "fail") return { message: ui.failMessage.value };
  return JSON.parse(ui.echoInput.value); // echo and added kinds: any JSON
}

async function submit(event) {
  event.preventDefault();
  ui.formError.hidden = true;
  const key = ui.key.value.trim();
  remember(localStorage, KEY_STORE, key);
  const kind = selectedKind();
  let input;
  try {
    input = taskInput(kind);
  } catch (error) {
    return formError(`The input is not JSON: ${error.message}`);
  }
  ui.run.disabled = true;
  try {
    const response = await fetch("/v1/tasks", {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: JSON.stringify({ kind, input, websocket: true }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      if (recall(localStorage, KEY_STORE) === key) forget(localStorage, KEY_STORE); // not offered again next time
      return formError("Relay does not know that API key.");
    }
    if (!response.ok) return formError(body.detail || `POST /v1/tasks answered ${response.status}`);
    const task = { id: body.id, token: body.ws_token, kind: body.kind };
    rememberTask(task);
    follow(task, body);
  } catch (error) {
    formError(`Could not reach Relay: ${error.message}`);
  } finally {
    ui.run.disabled = false;
  }
}

function formError(text) {
  ui.formError.textContent = text;
  ui.formError.hidden = false;
}

// Following one task at a time.

async function follow(task, snapshot = null) {
  if (current) relay.unsubscribe(current.id);
  current = task;
  resetTaskView(task);
  renderRecent();
  if (snapshot) showTask(snapshot);
  // After a reload the client resumes after the last seq this tab saw: show the earlier events from the log first.
  const seenSeq = relay.lastSeq(task.id);
  if (seenSeq > 0) await showHistory(task, seenSeq);
  if (current !== task) return;
  relay.subscribe(task.id, task.token, { onEvent: (event) => onEvent(task, event) });
}

async function showHistory(task, upToSeq) {
  try {
    const events = [];
    for (let after = 0; after !== null && after < upToSeq; ) {
      const response = await fetch(`/v1/tasks/${encodeURIComponent(task.id)}/events?after_seq=${after}`, {
        headers: { Authorization: `Bearer ${task.token}` },
      });
      if (!response.ok) throw new Error(`answered ${response.status}`);
      const page = await response.json();
      events.push(...page.events);
      after = page.events.length ? page.next_after_seq : null;
    }
    if (current !== task) return;
    note("history", `earlier events of this task, read over HTTP (the client resumes after seq ${upToSeq})`);
    for (const event of events) if (event.seq <= upToSeq) showEvent(event, { earlier: true });
  } catch (error) {
    note("error", `could not read the earlier events: ${error.message}`);
  }
}

function onEvent(task, event) {
  window.relayEvents.push({ taskId: event.task_id, seq: event.seq, type: event.type, id: event.id });
  if (current === task) showEvent(event);
}

function onStatus(status) {
  window.relayStatuses.push({ ...status, at: Date.now() });
  if (status.channel) setChannel(status.channel);
  if (status.taskId && status.taskId !== current?.id) return;
  switch (status.type) {
    case "fallback":
      note("fallback", status.text);
      break;
    case "connecting":
      setConn("connecting", "connecting…");
      break;
    case "open":
      setConn("open", "connected");
      note("open", status.text);
      break;
    case "closed":
      if (status.code === undefined) {
        // A stream that ended with its task (or that the page dropped): no error code to show.
        setConn("ended", status.text);
        note("ended", status.text);
      } else {
        setConn("closed", `closed (${status.code}${status.reason ? `: ${status.reason}` : ""})`);
        note("closed", status.text);
      }
      break;
    case "reconnecting":
      reconnects += 1;
      ui.statReconnects.textContent = String(reconnects);
      setConn("reconnecting", status.text);
      note("reconnecting", status.text);
      break;
    case "subscribed":
      note(status.afterSeq > 0 ? "resumed" : "subscribed", status.text);
      if (!isFinal(ui.taskStatus.dataset.status)) setStatus(status.status);
      break;
    case "recovered":
      note("error", status.text);
      showTask(status.task);
      break;
    case "error":
      note("error", status.text);
      break;
  }
}

// Rendering.

function resetTaskView(task) {
  ui.taskId.textContent = task.id;
  setStatus("queued");
  setProgress(0, "");
  ui.outcome.hidden = true;
  ui.log.replaceChildren();
  ui.logEmpty.hidden = false;
  ui.statEvents.textContent = "0";
  ui.cut.disabled = false;
  shown = [];
  checkOrder();
}

let shown = []; // seqs shown in the log for the current task, earlier ones included

function showEvent(event, { earlier = false } = {}) {
  shown.push(event.seq);
  ui.statEvents.textContent = String(shown.length);
  checkOrder();
  logRow(
    earlier ? "event earlier" : "event",
    cell(`#${event.seq}`, "seq"),
    cell(event.type.replace("task.", ""), `type ${event.type.replace(".", "-")}`),
    cell(clock(new Date(event.created_at)), "time"),
    cell(JSON.stringify(event.data), "data"),
  );
  if (event.type === "task.progress") {
    setStatus("running");
    setProgress(event.data.percent, event.data.message);
  } else if (event.type === "task.retrying") {
    setStatus("scheduled");
    setProgress(0, `attempt ${event.data.attempt} at ${clock(new Date(event.data.run_at))}`);
  } else {
    setStatus(event.data.status);
    if (event.data.status === "succeeded") setProgress(100, "done");
    if (event.data.status === "cancelled") showOutcome("cancelled", null);
    else showOutcome(event.data.status, event.data.status === "succeeded" ? event.data.result : event.data.error);
  }
}

// A task read over HTTP (the POST answer, or the task after events expired).
function showTask(task) {
  setStatus(task.status);
  if (task.progress) setProgress(task.progress.percent, task.progress.message);
  if (task.status === "succeeded") {
    setProgress(100, "done");
    showOutcome("succeeded", task.result);
  } else if (task.status === "failed") {
    showOutcome("failed", task.error);
  } else if (task.status === "cancelled") {
    showOutcome("cancelled", null);
  }
}

function showOutcome(status, value) {
  ui.cut.disabled = true; // the task has ended: no connection left worth cutting
  ui.outcome.hidden = false;
  ui.outcome.dataset.status = status;
  ui.outcome.textContent =
    status === "cancelled"
      ? "cancelled before it finished"
      : `${status === "succeeded" ? "result" : "error"}: ${JSON.stringify(value, null, 2)}`;
}

function note(kind, text) {
  const icon =
    { open: "●", closed: "✕", ended: "■", reconnecting: "↻", resumed: "⤷", subscribed: "⤷", history: "⋯", fallback: "⇄" }[kind] ||
    "!";
  logRow(`note note-${kind}`, cell(icon, "seq"), cell(kind, "type"), cell(clock(new Date()), "time"), cell(text, "data"));
}

function logRow(className, ...cells) {
  const wrap = ui.logWrap;
  const following = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 40; // the reader is at the bottom
  ui.logEmpty.hidden = true;
  const row = document.createElement("tr");
  row.className = className;
  row.append(...cells);
  ui.log.append(row);
  if (following) wrap.scrollTop = wrap.scrollHeight;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.className = className;
  td.textContent = text;
  return td;
}

function checkOrder() {
  const ok = shown.every((seq, i) => seq === i + 1);
  ui.statOrder.dataset.ok = shown.length === 0 ? "none" : String(ok);
  if (shown.length === 0) ui.statOrder.textContent = "no events yet";
  else if (ok) ui.statOrder.textContent = `seq 1–${shown.length}: in order, no gaps, no repeats`;
  else ui.statOrder.textContent = `out of order: ${shown.join(", ")}`;
}

function setStatus(status) {
  ui.cancel.disabled = !current || isFinal(status);
  ui.taskStatus.dataset.status = status;
  ui.taskStatus.textContent = status;
  ui.progress.dataset.status = status;
}

function setProgress(percent, message) {
  const clamped = Math.max(0, Math.min(100, Number(percent) || 0));
  ui.bar.style.width = `${clamped}%`;
  ui.progress.setAttribute("aria-valuenow", String(clamped));
  ui.percent.textContent = `${Math.round(clamped)}%`;
  ui.progressMessage.textContent = message || "";
}

function setConn(state, text) {
  ui.conn.dataset.state = state;
  ui.connText.textContent = text;
}

// Which channel carries the events: the WebSocket, or Server-Sent Events when no socket could be opened.
function setChannel(channel) {
  ui.channel.dataset.channel = channel;
  ui.channel.textContent = channel === "sse" ? "SSE" : "WebSocket";
  ui.channel.title =
    channel === "sse" ? "No WebSocket could be opened: events arrive over Server-Sent Events" : "Events arrive over a WebSocket";
}

const isFinal = (status) => status === "succeeded" || status === "failed" || status === "cancelled";

function clock(date) {
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

// Recent tasks of this tab.

function rememberTask(task) {
  const tasks = recentTasks().filter((t) => t.id !== task.id);
  tasks.unshift({ ...task, at: Date.now() });
  remember(sessionStorage, RECENT_STORE, JSON.stringify(tasks.slice(0, RECENT_MAX)));
}

function recentTasks() {
  try {
    return JSON.parse(recall(sessionStorage, RECENT_STORE) || "[]");
  } catch {
    return [];
  }
}

function renderRecent() {
  const tasks = recentTasks();
  ui.recentEmpty.hidden = tasks.length > 0;
  ui.recent.replaceChildren(
    ...tasks.map((task) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = task.id === current?.id ? "current" : "";
      button.innerHTML = `<span class="kind"></span><code></code><span class="when"></span>`;
      button.querySelector(".kind").textContent = task.kind;
      button.querySelector("code").textContent = task.id;
      button.querySelector(".when").textContent = clock(new Date(task.at)).slice(0, 8);
      button.addEventListener("click", () => follow(task));
      item.append(button);
      return item;
    }),
  );
}

function remember(storage, key, value) {
  try {
    storage.setItem(key, value);
  } catch {
    // private mode or full: the page still works, it just forgets
  }
}

function forget(storage, key) {
  try {
    storage.removeItem(key);
  } catch {
    // see remember
  }
}

function recall(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null;
  }
}

// Start.

initKey();
ui.form.addEventListener("submit", submit);
ui.form.addEventListener("change", (event) => event.target.name === "kind" && showKindFields());
ui.cut.addEventListener("click", () => relay.dropConnection());
ui.cancel.addEventListener("click", cancelCurrent);

async function cancelCurrent() {
  if (!current) return;
  const task = current;
  ui.cancel.disabled = true;
  try {
    const response = await fetch(`/v1/tasks/${encodeURIComponent(task.id)}/cancel`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ui.key.value.trim()}` },
    });
    const body = await response.json().catch(() => ({}));
    // The task.cancelled event arrives over the socket like any final event; a 409 means it ended first.
    if (!response.ok) note("error", body.detail || `cancel answered ${response.status}`);
  } catch (error) {
    note("error", `Could not reach Relay: ${error.message}`);
  }
}
showKindFields();
addKinds();
renderRecent();
const [latest] = recentTasks();
if (latest) follow(latest); // a reload keeps following where the tab was
