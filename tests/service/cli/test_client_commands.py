"""`relay dlq ...` and `relay submit` against a small fake of the Relay API on a real local port.

The fake answers with canned but realistic JSON; the real API is tested elsewhere.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import msgspec
import pytest
from click.testing import CliRunner, Result

from schemas.dead_letters import DeadLetter
from schemas.tasks import Task
from service.cli.destinations import destinations
from service.cli.dlq import dlq
from service.cli.signing_secret import signing_secret
from service.cli.submit import submit
from service.processes import free_port

ADMIN_TOKEN = "admin-secret-7f3a"
TENANT_KEY = "acme-key-91c2"
PAGE_SIZE = 2  # the fake's largest page, so three dead letters take two pages
DROP = 0  # a status that means: close the connection without an answer


def _event(task_id: str, seq: int, type_: str, data: object) -> dict[str, Any]:
    return {
        "id": f"evt_{task_id[5:]}_{seq}",
        "type": type_,
        "task_id": task_id,
        "seq": seq,
        "created_at": f"2025-03-01T10:00:{seq:02d}Z",
        "data": data,
    }


def _dead_letter(n: int, *, tenant: str, reason: str, status: int | None, error: str | None) -> dict[str, Any]:
    task_id = f"task_01JNQ{n}ZC8W4T6YV0K2M9R5XH3D"
    return {
        "id": f"dl_01JNQ{n}ZF2A7B3C4D5E6F7G8H9J",
        "tenant": tenant,
        "task_id": task_id,
        "event": _event(task_id, 2, "task.completed", {"status": "succeeded", "result": {"n": n}}),
        "url": f"https://hooks.example.com/{tenant}/relay",
        "reason": reason,
        "attempts": 9,
        "last_status_code": status,
        "last_error": error,
        "first_attempt_at": f"2025-03-0{n}T10:00:05Z",
        "dead_at": f"2025-03-0{n + 1}T12:30:00Z",
        "replays": n - 1,
    }


def _dead_letters() -> dict[str, dict[str, Any]]:
    letters = [
        _dead_letter(1, tenant="acme", reason="retries_exhausted", status=None, error="[Errno 111] Connection refused"),
        _dead_letter(2, tenant="globex", reason="endpoint_gone", status=410, error=None),
        _dead_letter(3, tenant="acme", reason="retries_exhausted", status=500, error="Internal Server Error"),
    ]
    return {letter["id"]: letter for letter in letters}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None
    idempotency_key: str | None = None


def _destination(n: int, *, state: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"dst_{n}qzcwr5ny6hw4nbt6tfxmk4g3q",
        "tenant": "acme",
        "origin": f"https://hooks{n}.example.com",
        "state": state,
        "max_in_flight": 64,
        "rate_per_s": None,
        "in_flight": 0,
        "owed": 0,
        "consecutive_failures": 0,
        "last_success_at": None,
        "last_failure_at": None,
        "last_error": None,
        "opened_at": None,
        "next_probe_at": None,
    } | fields


def _destinations() -> dict[str, dict[str, Any]]:
    found = [
        # Open, its probe's wait long over, nothing owed to probe with.
        _destination(
            1,
            state="open",
            consecutive_failures=10,
            last_failure_at="2025-03-01T10:19:54Z",
            last_error="cannot connect: connection refused",
            opened_at="2025-03-01T10:19:54Z",
            next_probe_at="2025-03-01T10:20:14Z",
        ),
        # Healthy again: its error is from before its last success.
        _destination(
            2,
            state="healthy",
            last_success_at="2025-03-01T11:00:00Z",
            last_failure_at="2025-03-01T10:00:00Z",
            last_error="HTTP 503: the receiver said it was overloaded and would be back in a minute or so",
        ),
        _destination(
            3,
            state="degraded",
            consecutive_failures=1,
            last_success_at="2025-03-01T10:00:00Z",
            last_failure_at="2025-03-01T11:30:00Z",
            last_error="HTTP 500",
        ),
    ]
    return {d["id"]: d for d in found}


@dataclass
class FakeRelay:
    url: str = ""
    dead_letters: dict[str, dict[str, Any]] = field(default_factory=_dead_letters)
    destinations: dict[str, dict[str, Any]] = field(default_factory=_destinations)
    secret: str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    revealed: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> task id
    empty_pages: int = 0  # lists answer this many pages with no item and a cursor first (a filter matching little)
    stalled_submits: int = 0  # submissions answer 503 this many times first (a store that stalls)
    dropped_submits: int = 0  # submissions are taken, then the connection closed unanswered, this many times first
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self, method: str, path_prefix: str = "/") -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def handle(self, seen: Seen) -> tuple[int, Any]:
        with self.lock:
            self.seen.append(seen)
            return self._route(seen)

    def _route(self, req: Seen) -> tuple[int, Any]:
        routes = [
            ("GET", r"/v1/dead-letters", self._list, ADMIN_TOKEN),
            ("POST", r"/v1/dead-letters/replay", self._replay_all, ADMIN_TOKEN),
            ("GET", r"/v1/dead-letters/(dl_\w+)", self._get_dead_letter, None),
            ("DELETE", r"/v1/dead-letters/(dl_\w+)", self._delete, ADMIN_TOKEN),
            ("POST", r"/v1/dead-letters/(dl_\w+)/replay", self._replay_one, ADMIN_TOKEN),
            ("POST", r"/v1/tasks", self._submit, TENANT_KEY),
            ("GET", r"/v1/tasks/(task_\w+)", self._get_task, TENANT_KEY),
            ("GET", r"/v1/tasks/(task_\w+)/events", self._events, TENANT_KEY),
            ("GET", r"/v1/tasks/(task_\w+)/deliveries", self._deliveries, None),
            ("GET", r"/v1/destinations", self._list_destinations, None),
            ("GET", r"/v1/destinations/(dst_\w+)", self._get_destination, None),
            ("GET", r"/v1/signing-secret", self._secret, TENANT_KEY),
            ("POST", r"/v1/signing-secret/rotate", self._rotate, TENANT_KEY),
        ]
        for method, pattern, handler, token in routes:
            match = re.fullmatch(pattern, req.path)
            if match is None or method != req.method:
                continue
            allowed = {ADMIN_TOKEN, TENANT_KEY} if token is None else {token}
            if req.authorization not in {f"Bearer {t}" for t in allowed}:
                return _error(401, "No valid API key or admin token")
            return handler(req, *match.groups())
        return _error(404, f"No route for {req.method} {req.path}")

    def _list(self, req: Seen) -> tuple[int, Any]:
        query = {name: values[0] for name, values in req.query.items()}
        items = sorted(self.dead_letters.values(), key=lambda d: d["dead_at"], reverse=True)
        items = [d for d in items if all(d[f] == query[f] for f in ("reason", "tenant", "task_id") if f in query)]
        start = int(query.get("cursor", "0").split("~")[0])
        if self.empty_pages > 0:  # as Relay's: the cursor of a page that looked at entries and matched none moves on
            self.empty_pages -= 1
            return 200, {"items": [], "next_cursor": f"{start}~{self.empty_pages}"}
        end = start + min(int(query.get("limit", "100")), PAGE_SIZE)
        return 200, {"items": items[start:end], "next_cursor": str(end) if end < len(items) else None}

    def _get_dead_letter(self, req: Seen, dl_id: str) -> tuple[int, Any]:
        if dl_id not in self.dead_letters:
            return _error(404, f"Dead letter {dl_id} not found")
        return 200, self.dead_letters[dl_id]

    def _delete(self, req: Seen, dl_id: str) -> tuple[int, Any]:
        if self.dead_letters.pop(dl_id, None) is None:
            return _error(404, f"Dead letter {dl_id} not found")
        return 204, None

    def _replay_one(self, req: Seen, dl_id: str) -> tuple[int, Any]:
        if dl_id not in self.dead_letters:
            return _error(404, f"Dead letter {dl_id} not found")
        return 202, {"replayed": 1}

    def _replay_all(self, req: Seen) -> tuple[int, Any]:
        body = req.body or {}
        matched = sum(
            1 for d in self.dead_letters.values() if all(d[f] == body[f] for f in ("reason", "tenant") if f in body)
        )
        return 202, {"matched": matched, "replayed": 0 if body.get("dry_run") else matched}

    def _submit(self, req: Seen) -> tuple[int, Any]:
        if self.stalled_submits > 0:
            self.stalled_submits -= 1
            return _error(503, "The store is stalled")
        if req.idempotency_key in self.by_key:  # the same key: the first answer, and nothing made again
            return 202, self.tasks[self.by_key[req.idempotency_key]]
        kind = req.body["kind"]
        if kind not in ("echo", "fail"):
            return _error(422, f"Unknown task kind {kind!r}")
        task_id = f"task_01JNR{len(self.tasks)}ZC8W4T6YV0K2M9R5XH3D"
        self.tasks[task_id] = {
            "id": task_id,
            "kind": kind,
            "status": "queued",
            "input": req.body["input"],
            "result": None,
            "error": None,
            "progress": None,
            "webhook": req.body.get("webhook"),  # a field left out is null
            "websocket": req.body["websocket"],
            "created_at": "2025-03-01T10:00:00Z",
            "started_at": None,
            "finished_at": None,
            "ws_token": "wst_" + task_id[5:],
        }
        final = (
            _event(task_id, 2, "task.completed", {"status": "succeeded", "result": req.body["input"]})
            if kind == "echo"
            else _event(task_id, 2, "task.failed", {"status": "failed", "error": _boom()})
        )
        self.events[task_id] = [_event(task_id, 1, "task.progress", {"percent": 50, "message": "halfway"}), final]
        self.revealed[task_id] = 0
        if req.idempotency_key is not None:
            self.by_key[req.idempotency_key] = task_id
        if self.dropped_submits > 0:
            self.dropped_submits -= 1
            return DROP, None
        return 202, self.tasks[task_id]

    def _get_task(self, req: Seen, task_id: str) -> tuple[int, Any]:
        if task_id not in self.tasks:
            return _error(404, f"Task {task_id} not found")
        return 200, self.tasks[task_id]

    def _events(self, req: Seen, task_id: str) -> tuple[int, Any]:
        # One more event becomes visible per poll, so a follower has to poll more than once.
        self.revealed[task_id] = min(self.revealed[task_id] + 1, len(self.events[task_id]))
        visible = self.events[task_id][: self.revealed[task_id]]
        if self.revealed[task_id] == 1:
            self.tasks[task_id] |= {"status": "running", "started_at": "2025-03-01T10:00:01Z"}
        else:
            self._finish(task_id)
        after_seq = int(req.query["after_seq"][0])
        return 200, {"events": [e for e in visible if e["seq"] > after_seq]}

    def _finish(self, task_id: str) -> None:
        task = self.tasks[task_id]
        task["finished_at"] = "2025-03-01T10:00:02Z"
        if task["kind"] == "echo":
            task |= {"status": "succeeded", "result": task["input"]}
        else:
            task |= {"status": "failed", "error": _boom()}

    def _deliveries(self, req: Seen, task_id: str) -> tuple[int, Any]:
        letter = next(d for d in self.dead_letters.values() if d["task_id"] == task_id)
        event_id = letter["event"]["id"]
        attempts = [
            {
                "event_id": event_id,
                "channel": "webhook",
                "attempt": n,
                "at": f"2025-03-01T1{n}:00:00Z",
                "outcome": "failed",
                "status_code": 500,
                "error": None,
                "duration_ms": 41.5,
            }
            for n in (1, 2)
        ]
        return 200, {"attempts": attempts}

    def _list_destinations(self, req: Seen) -> tuple[int, Any]:
        return 200, {"items": list(self.destinations.values()), "next_cursor": None}

    def _get_destination(self, req: Seen, dst_id: str) -> tuple[int, Any]:
        if dst_id not in self.destinations:
            return _error(404, f"Destination {dst_id} not found")
        return 200, self.destinations[dst_id]

    def _secret(self, req: Seen) -> tuple[int, Any]:
        return 200, {"secret": self.secret}

    def _rotate(self, req: Seen) -> tuple[int, Any]:
        self.secret = "whsec_" + "R" * 32
        return 200, {"secret": self.secret}


def _boom() -> dict[str, str]:
    return {"type": "RuntimeError", "message": "boom"}


def _error(status: int, detail: str) -> tuple[int, Any]:
    return status, {"status_code": status, "detail": detail}


def _handler_for(fake: FakeRelay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            seen = Seen(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                body=json.loads(raw) if raw else None,
                authorization=self.headers.get("authorization"),
                idempotency_key=self.headers.get("idempotency-key"),
            )
            status, payload = fake.handle(seen)
            if status == DROP:
                self.close_connection = True
                return
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeRelay]:
    fake = FakeRelay()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-relay-api", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run(
    command: click.Command, args: Sequence[str], env: dict[str, str | None] | None = None, input: str | None = None
) -> Result:
    """Invoke ``command`` with a clean RELAY_* environment and a wide, colourless terminal."""
    base: dict[str, str | None] = {
        "RELAY_URL": None,
        "RELAY_ADMIN_TOKEN": None,
        "RELAY_API_KEY": None,
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
    }
    # catch_exceptions=False: a crash must fail the test, not pass for "exit status 1".
    return CliRunner().invoke(command, list(args), env=base | (env or {}), input=input, catch_exceptions=False)


def as_admin(fake: FakeRelay, *args: str) -> list[str]:
    return [*args, "--url", fake.url, "--token", ADMIN_TOKEN]


def as_tenant(fake: FakeRelay, *args: str) -> list[str]:
    return [*args, "--url", fake.url, "--token", TENANT_KEY]


def stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- dlq list -----------------------------------------------------------------------------------


def test_list_prints_a_table_newest_first_across_pages(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "list"))

    assert result.exit_code == 0, result.output
    positions = [result.stdout.index(dl_id) for dl_id in sorted(fake_api.dead_letters, reverse=True)]
    assert positions == sorted(positions)  # dl_…3 (died last) first
    assert "[Errno 111] Connection refused" in result.stdout  # API text is not read as rich markup
    assert "500: Internal Server Error" in result.stdout
    assert "endpoint_gone" in result.stdout
    assert "2025-03-04 12:30:00Z" in result.stdout
    pages = fake_api.requests("GET", "/v1/dead-letters")
    assert [p.query.get("cursor") for p in pages] == [None, ["2"]]
    assert all(p.authorization == f"Bearer {ADMIN_TOKEN}" for p in pages)


@pytest.mark.parametrize("columns", ["80", "120"])
def test_list_keeps_every_id_on_one_line_on_a_narrow_terminal(fake_api: FakeRelay, columns: str) -> None:
    result = run(dlq, as_admin(fake_api, "list"), env={"COLUMNS": columns, "TTY_COMPATIBLE": "1"})

    assert result.exit_code == 0, result.output
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in result.stdout.splitlines()]
    assert max(len(line) for line in lines) <= int(columns)
    for letter in fake_api.dead_letters.values():
        assert any(letter["id"] in line and letter["task_id"] in line for line in lines), result.stdout


def test_list_json_prints_one_dead_letter_per_line(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "list", "--json"))

    assert result.exit_code == 0, result.output
    letters = [msgspec.json.decode(line, type=DeadLetter) for line in result.stdout.splitlines()]
    assert [d.id for d in letters] == sorted(fake_api.dead_letters, reverse=True)
    assert letters[-1].last_error == "[Errno 111] Connection refused"


def test_list_follows_a_page_with_no_item_that_says_there_is_more(fake_api: FakeRelay) -> None:
    fake_api.empty_pages = 2
    result = run(dlq, as_admin(fake_api, "list", "--json"))

    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["id"] for line in result.stdout.splitlines()) == sorted(fake_api.dead_letters)


def test_list_stops_at_the_limit(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "list", "--json", "--limit", "1"))

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    assert [p.query["limit"] for p in fake_api.requests("GET", "/v1/dead-letters")] == [["1"]]


def test_list_sends_filters_with_times_in_utc(fake_api: FakeRelay) -> None:
    args = ["list", "--json", "--reason", "retries_exhausted", "--tenant", "acme", "--task-id", "task_x"]
    args += ["--since", "2025-03-01T01:00:00+01:00", "--until", "2025-03-05T00:00:00"]
    result = run(dlq, as_admin(fake_api, *args))

    assert result.exit_code == 0, result.output
    (page,) = fake_api.requests("GET", "/v1/dead-letters")
    assert page.query == {
        "reason": ["retries_exhausted"],
        "tenant": ["acme"],
        "task_id": ["task_x"],
        "since": ["2025-03-01T00:00:00Z"],
        "until": ["2025-03-05T00:00:00Z"],
        "limit": ["100"],
    }


def test_list_rejects_a_time_that_is_not_rfc3339(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "list", "--since", "yesterday"))

    assert result.exit_code == 2
    assert "RFC 3339" in result.stderr
    assert fake_api.seen == []


def test_url_and_token_come_from_the_environment(fake_api: FakeRelay) -> None:
    result = run(dlq, ["list", "--json"], env={"RELAY_URL": fake_api.url, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN})

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3


# --- dlq show -----------------------------------------------------------------------------------


def test_show_missing_id_exits_1_with_the_detail(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "show", "dl_missing"))

    assert result.exit_code == 1
    assert stderr_lines(result) == ["relay: Dead letter dl_missing not found (HTTP 404)"]
    assert result.stdout == ""


@pytest.mark.parametrize("as_", [as_admin, as_tenant], ids=["operator", "owner"])
def test_show_prints_fields_event_and_every_attempt(fake_api: FakeRelay, as_: Callable[..., list[str]]) -> None:
    dl_id = next(iter(fake_api.dead_letters))
    result = run(dlq, as_(fake_api, "show", dl_id))

    assert result.exit_code == 0, result.output
    letter = fake_api.dead_letters[dl_id]
    for text in (dl_id, letter["url"], "[Errno 111] Connection refused", letter["event"]["id"], "task.completed"):
        assert text in result.stdout
    attempt_rows = [line for line in result.stdout.splitlines() if "webhook" in line and "failed" in line]
    assert len(attempt_rows) == 2
    assert "expired" not in result.stdout


def test_show_json_prints_the_api_answer(fake_api: FakeRelay) -> None:
    dl_id = next(iter(fake_api.dead_letters))
    result = run(dlq, as_admin(fake_api, "show", dl_id, "--json"))

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == fake_api.dead_letters[dl_id]


# --- dlq replay ---------------------------------------------------------------------------------


def test_replay_of_several_ids_posts_each(fake_api: FakeRelay) -> None:
    ids = sorted(fake_api.dead_letters)[:2]
    result = run(dlq, as_admin(fake_api, "replay", *ids))

    assert result.exit_code == 0, result.output
    assert [s.path for s in fake_api.requests("POST")] == [f"/v1/dead-letters/{i}/replay" for i in ids]
    assert "queued 2 of 2 for delivery again" in result.stdout


def test_replay_goes_on_past_a_missing_id_and_exits_1(fake_api: FakeRelay) -> None:
    dl_id = next(iter(fake_api.dead_letters))
    result = run(dlq, as_admin(fake_api, "replay", "dl_missing", dl_id))

    assert result.exit_code == 1
    assert "queued 1 of 2 for delivery again" in result.stdout
    assert stderr_lines(result) == ["relay: dl_missing: Dead letter dl_missing not found (HTTP 404)"]
    assert len(fake_api.requests("POST")) == 2


def test_replay_all_dry_run_sends_dry_run_and_prints_matched(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "replay", "--all", "--reason", "retries_exhausted", "--dry-run"))

    assert result.exit_code == 0, result.output
    (request,) = fake_api.requests("POST")
    assert request.path == "/v1/dead-letters/replay"
    assert request.body == {"reason": "retries_exhausted", "dry_run": True}
    assert result.stdout.strip() == "dry run: 2 would be queued for delivery again"


def test_replay_all_lists_the_matches_then_replays_each(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "replay", "--all", "--tenant", "globex", "--since", "2025-03-01T00:00:00Z"))

    assert result.exit_code == 0, result.output
    (listing,) = fake_api.requests("GET", "/v1/dead-letters")
    assert listing.query["tenant"] == ["globex"]
    assert listing.query["since"] == ["2025-03-01T00:00:00Z"]
    replays = fake_api.requests("POST")
    assert replays, "nothing was replayed"
    assert all(r.path.endswith("/replay") and r.path != "/v1/dead-letters/replay" for r in replays)
    assert result.stdout.startswith(f"queued {len(replays)} of {len(replays)} for delivery again")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="neither-ids-nor-all"),
        pytest.param(["dl_1", "--all"], id="ids-and-all"),
        pytest.param(["dl_1", "--reason", "endpoint_gone"], id="filter-with-ids"),
        pytest.param(["dl_1", "--dry-run"], id="dry-run-with-ids"),
    ],
)
def test_replay_needs_ids_or_all_and_exits_2(fake_api: FakeRelay, args: list[str]) -> None:
    result = run(dlq, as_admin(fake_api, "replay", *args))

    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert fake_api.seen == []


# --- dlq purge ----------------------------------------------------------------------------------


def test_purge_all_deletes_every_listed_id_across_two_pages(fake_api: FakeRelay) -> None:
    ids = set(fake_api.dead_letters)
    result = run(dlq, as_admin(fake_api, "purge", "--all"), input="y\n")

    assert result.exit_code == 0, result.output
    assert "Delete 3 dead letters for good? [y/N]" in result.stderr
    assert len(fake_api.requests("GET", "/v1/dead-letters")) == 2
    assert {s.path.rsplit("/", 1)[1] for s in fake_api.requests("DELETE")} == ids
    assert fake_api.dead_letters == {}
    assert "deleted 3 of 3" in result.stdout


def test_purge_all_lists_the_matches_before_it_asks(fake_api: FakeRelay) -> None:
    acme = sorted(d["id"] for d in fake_api.dead_letters.values() if d["tenant"] == "acme")
    result = run(dlq, as_admin(fake_api, "purge", "--all", "--tenant", "acme"), input="n\n")

    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("dl_")]
    assert sorted(listed) == acme  # what would go, each id whole, before the question
    assert "Delete 2 dead letters for good? [y/N]" in result.stderr
    assert "Nothing deleted." in result.stdout
    assert fake_api.requests("DELETE") == []


def test_purge_all_with_a_filter_keeps_the_others(fake_api: FakeRelay) -> None:
    result = run(dlq, as_admin(fake_api, "purge", "--all", "--tenant", "acme", "--yes"))

    assert result.exit_code == 0, result.output
    assert [d["tenant"] for d in fake_api.dead_letters.values()] == ["globex"]
    assert "deleted 2 of 2" in result.stdout


def test_purge_all_deletes_nothing_unless_confirmed(fake_api: FakeRelay) -> None:
    before = dict(fake_api.dead_letters)
    refused = run(dlq, as_admin(fake_api, "purge", "--all"), input="n\n")
    no_answer = run(dlq, as_admin(fake_api, "purge", "--all"), input="")

    assert refused.exit_code == 0
    assert "Nothing deleted." in refused.stdout
    assert no_answer.exit_code == 1  # no one to ask (no --yes): a failure, not a quiet yes
    assert "Aborted" in no_answer.stderr
    assert fake_api.requests("DELETE") == []
    assert fake_api.dead_letters == before


def test_purge_all_dry_run_counts_and_deletes_nothing(fake_api: FakeRelay) -> None:
    before = dict(fake_api.dead_letters)
    result = run(dlq, as_admin(fake_api, "purge", "--all", "--tenant", "acme", "--dry-run"))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "dry run: 2 would be deleted"
    assert fake_api.requests("DELETE") == []
    assert fake_api.dead_letters == before


def test_purge_all_since_and_until_narrow_the_selection(fake_api: FakeRelay) -> None:
    result = run(
        dlq,
        as_admin(
            fake_api, "purge", "--all", "--since", "2025-03-01T00:00:00Z", "--until", "2025-04-01T00:00:00Z", "-y"
        ),
    )

    assert result.exit_code == 0, result.output
    (listed, *_) = fake_api.requests("GET", "/v1/dead-letters")
    assert listed.query["since"] == ["2025-03-01T00:00:00Z"]
    assert listed.query["until"] == ["2025-04-01T00:00:00Z"]


def test_purge_ids_takes_yes_but_not_filters(fake_api: FakeRelay) -> None:
    first, *_ = sorted(fake_api.dead_letters)
    assert run(dlq, as_admin(fake_api, "purge", first, "--yes")).exit_code == 0
    narrowed = run(dlq, as_admin(fake_api, "purge", first, "--tenant", "acme"))
    assert narrowed.exit_code == 2
    assert "--tenant only applies with --all." in narrowed.stderr


def test_purge_ids_deletes_those(fake_api: FakeRelay) -> None:
    first, second, third = sorted(fake_api.dead_letters)
    result = run(dlq, as_admin(fake_api, "purge", first, third))

    assert result.exit_code == 0, result.output
    assert list(fake_api.dead_letters) == [second]
    assert "deleted 2 of 2" in result.stdout


# --- destinations ---------------------------------------------------------------------------------


def _row(output: str, dst_id: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(dst_id)]
    return line


def test_destinations_list_shows_a_current_errors_time_and_not_a_healthy_ones_old_error(fake_api: FakeRelay) -> None:
    opened, healthy, degraded = fake_api.destinations
    result = run(destinations, as_admin(fake_api, "list"))

    assert result.exit_code == 0, result.output
    assert "2025-03-01 10:19:54Z  cannot connect: connection refused" in _row(result.stdout, opened)
    assert "2025-03-01 11:30:00Z  HTTP 500" in _row(result.stdout, degraded)
    # Healthy since its last success: the old error is not shown as its last error.
    assert "HTTP 503" not in result.stdout
    assert _row(result.stdout, healthy).rstrip().endswith("-")


def test_destinations_show_tells_an_old_error_from_a_current_one(fake_api: FakeRelay) -> None:
    _, healthy, degraded = fake_api.destinations
    old = run(destinations, as_admin(fake_api, "show", healthy))
    current = run(destinations, as_admin(fake_api, "show", degraded))

    assert old.exit_code == 0, old.output
    assert "(at 2025-03-01 10:00:00Z, before the last success)" in old.stdout
    assert "HTTP 500 (at 2025-03-01 11:30:00Z)" in current.stdout


def test_destinations_show_an_open_one_with_nothing_owed_waits_for_a_webhook_to_probe_with(
    fake_api: FakeRelay,
) -> None:
    opened, *_ = fake_api.destinations
    waiting = run(destinations, as_admin(fake_api, "show", opened))
    fake_api.destinations[opened] |= {"owed": 3}
    owed = run(destinations, as_admin(fake_api, "show", opened))

    assert waiting.exit_code == 0, waiting.output
    (probe,) = [line for line in waiting.stdout.splitlines() if line.startswith("next probe")]
    assert "waiting for a webhook to probe with" in probe
    assert "10:20:14Z" in probe  # when its wait ended
    (probe,) = [line for line in owed.stdout.splitlines() if line.startswith("next probe")]
    assert probe.split(None, 2)[2].strip() == "2025-03-01 10:20:14Z"


def test_destinations_of_a_newer_relay_show_a_state_this_cli_does_not_know(fake_api: FakeRelay) -> None:
    draining = _destination(9, state="draining", owed=4, headers={"x-tenant": "***"})
    fake_api.destinations[draining["id"]] = draining
    listed = run(destinations, as_admin(fake_api, "list"))
    shown = run(destinations, as_admin(fake_api, "show", draining["id"]))

    assert listed.exit_code == 0, listed.output
    assert _row(listed.stdout, draining["id"]).split()[1:3] == ["draining", "0/64"]
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^state\s+draining\s*$", shown.stdout, re.MULTILINE)


# --- signing-secret -------------------------------------------------------------------------------


def test_signing_secret_prints_the_tenants_secret_alone(fake_api: FakeRelay) -> None:
    result = run(signing_secret, [], env={"RELAY_URL": fake_api.url, "RELAY_API_KEY": TENANT_KEY})

    assert result.exit_code == 0, result.output
    assert result.stdout == fake_api.secret + "\n"  # so that secret=$(relay signing-secret) works
    assert fake_api.requests("GET", "/v1/signing-secret")[0].authorization == f"Bearer {TENANT_KEY}"


def test_signing_secret_rotate_prints_the_new_one_and_says_the_old_still_signs(fake_api: FakeRelay) -> None:
    before = fake_api.secret
    result = run(signing_secret, as_tenant(fake_api, "--rotate"))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == fake_api.secret != before
    assert "old secret keeps signing beside this one for 24 h" in result.stderr
    assert len(fake_api.requests("POST", "/v1/signing-secret/rotate")) == 1


def test_signing_secret_needs_a_tenant_key(fake_api: FakeRelay) -> None:
    missing = run(signing_secret, ["--url", fake_api.url], env={"RELAY_ADMIN_TOKEN": ADMIN_TOKEN})
    refused = run(signing_secret, as_admin(fake_api))

    assert missing.exit_code == 2
    assert "RELAY_API_KEY" in missing.stderr
    assert refused.exit_code == 1
    assert "HTTP 401" in refused.stderr


# --- submit -------------------------------------------------------------------------------------


def test_submit_posts_the_body_and_prints_the_task(fake_api: FakeRelay) -> None:
    args = ["echo", "--input", '{"n": 1}', "--webhook", "https://hooks.example.com/in", "--websocket"]
    result = run(submit, as_tenant(fake_api, *args))

    assert result.exit_code == 0, result.output
    (request,) = fake_api.requests("POST", "/v1/tasks")
    assert request.body == {
        "kind": "echo",
        "input": {"n": 1},
        "webhook": {"url": "https://hooks.example.com/in"},
        "websocket": True,
    }
    assert request.authorization == f"Bearer {TENANT_KEY}"
    task = msgspec.json.decode(result.stdout, type=Task)
    assert task.id.startswith("task_")
    assert task.status.value == "queued"
    assert task.ws_token


def test_submit_events_lists_the_webhooks_event_types(fake_api: FakeRelay) -> None:
    args = ["echo", "--webhook", "https://hooks.example.com/in", "--events", "task.progress, completed"]
    assert run(submit, as_tenant(fake_api, *args)).exit_code == 0
    (request,) = fake_api.requests("POST", "/v1/tasks")
    assert request.body["webhook"] == {
        "url": "https://hooks.example.com/in",
        "events": ["task.progress", "task.completed"],
    }

    unknown = run(submit, as_tenant(fake_api, "echo", "--webhook", "https://h.example/in", "--events", "task.done"))
    alone = run(submit, as_tenant(fake_api, "echo", "--events", "task.progress"))
    assert unknown.exit_code == 2
    assert "unknown event type task.done" in unknown.stderr
    assert alone.exit_code == 2
    assert "--events only applies with --webhook." in alone.stderr
    assert len(fake_api.requests("POST", "/v1/tasks")) == 1


def test_submit_without_input_or_channels_sends_nulls(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "echo"))

    assert result.exit_code == 0, result.output
    (request,) = fake_api.requests("POST", "/v1/tasks")
    # What is not given is left out, which the API reads as null.
    assert request.body == {"kind": "echo", "input": None, "websocket": False}


def test_submit_schedules_with_delay_or_run_at_but_not_both(fake_api: FakeRelay) -> None:
    assert run(submit, as_tenant(fake_api, "echo", "--delay", "90")).exit_code == 0
    assert run(submit, as_tenant(fake_api, "echo", "--run-at", "2030-01-01T01:00:00+01:00")).exit_code == 0
    both = run(submit, as_tenant(fake_api, "echo", "--delay", "1", "--run-at", "2030-01-01T00:00:00Z"))

    assert both.exit_code == 2
    assert "not both" in both.stderr
    delayed, at = fake_api.requests("POST", "/v1/tasks")
    assert (delayed.body.get("delay_s"), delayed.body.get("run_at")) == (90.0, None)
    assert (at.body.get("delay_s"), at.body.get("run_at")) == (None, "2030-01-01T00:00:00Z")


def test_submit_reads_its_input_from_a_file_or_standard_input(fake_api: FakeRelay, tmp_path: Path) -> None:
    source = tmp_path / "input.json"
    source.write_text('{"from": "a file", "n": [1, 2]}')
    from_file = run(submit, as_tenant(fake_api, "echo", "--input", f"@{source}"))
    from_stdin = run(submit, as_tenant(fake_api, "echo", "--input", "-"), input='{"from": "stdin"}')
    missing = run(submit, as_tenant(fake_api, "echo", "--input", f"@{tmp_path / 'nowhere.json'}"))

    assert from_file.exit_code == from_stdin.exit_code == 0, from_file.output + from_stdin.output
    first, second = fake_api.requests("POST", "/v1/tasks")
    assert first.body["input"] == {"from": "a file", "n": [1, 2]}
    assert second.body["input"] == {"from": "stdin"}
    assert missing.exit_code == 2
    assert "cannot read" in missing.stderr


def test_submit_rejects_input_that_is_not_json(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "echo", "--input", "{n: 1}"))

    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr
    assert fake_api.seen == []


def test_submit_shows_the_apis_detail_for_a_refused_task(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "nope"))

    assert result.exit_code == 1
    assert stderr_lines(result) == ["relay: Unknown task kind 'nope' (HTTP 422)"]


def test_submit_wait_prints_the_result_and_exits_0(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "echo", "--input", '{"n": 1}', "--wait"))

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"n": 1}
    assert "50.0% halfway" in result.stderr
    # Two polls of the events, then the task is read at once after the final one (no 5 s fallback).
    (task_id,) = fake_api.tasks
    paths = [s.path for s in fake_api.requests("GET", "/v1/tasks/")]
    assert paths == [f"/v1/tasks/{task_id}/events"] * 2 + [f"/v1/tasks/{task_id}"]


def test_submit_wait_exits_1_when_the_task_failed(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "fail", "--input", '{"message": "boom"}', "--wait"))

    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"type": "RuntimeError", "message": "boom"}
    (task_id,) = fake_api.tasks
    assert stderr_lines(result)[-1] == f"relay: task {task_id} failed: boom"


def test_submit_through_a_stalled_store_is_retried_with_one_key_and_each_retry_is_told(fake_api: FakeRelay) -> None:
    fake_api.stalled_submits = 2
    result = run(submit, as_tenant(fake_api, "echo", "--input", "1"))

    assert result.exit_code == 0, result.output
    posts = fake_api.requests("POST", "/v1/tasks")
    assert len(posts) == 3
    assert posts[0].idempotency_key
    assert {p.idempotency_key for p in posts} == {posts[0].idempotency_key}  # a repeat, never a second task
    told = stderr_lines(result)
    assert len(told) == 2
    assert all(
        re.fullmatch(r"relay: The store is stalled \(HTTP 503\); trying again in \d\.\d s", line) for line in told
    )
    assert msgspec.json.decode(result.stdout, type=Task).id in fake_api.tasks


def test_submit_whose_answer_was_lost_is_sent_again_and_makes_one_task(fake_api: FakeRelay) -> None:
    fake_api.dropped_submits = 1
    result = run(submit, as_tenant(fake_api, "echo", "--input", "1"))

    assert result.exit_code == 0, result.output
    assert len(fake_api.requests("POST", "/v1/tasks")) == 2
    assert len(fake_api.tasks) == 1  # the repeat carried the first one's key
    (told,) = stderr_lines(result)
    assert re.fullmatch(
        rf"relay: no answer from the API at {fake_api.url} \(server disconnected without sending a response\.\); "
        r"trying again in \d\.\d s",
        told,
    ), told
    assert msgspec.json.decode(result.stdout, type=Task).id in fake_api.tasks


def test_submit_needs_a_tenant_key_not_the_admin_token(fake_api: FakeRelay) -> None:
    result = run(submit, ["echo", "--url", fake_api.url], env={"RELAY_ADMIN_TOKEN": ADMIN_TOKEN})

    assert result.exit_code == 2
    assert "--token" in result.stderr
    assert fake_api.seen == []


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args"),
    [
        pytest.param(dlq, ["list"], id="dlq-list"),
        pytest.param(dlq, ["replay", "--all"], id="dlq-replay-all"),
        pytest.param(submit, ["echo", "--wait"], id="submit"),
    ],
)
def test_unreachable_api_exits_1_with_one_line(command: click.Command, args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(command, [*args, "--url", url, "--token", ADMIN_TOKEN])

    assert result.exit_code == 1
    assert stderr_lines(result) == [
        f"relay: cannot reach the API at {url} (connection refused); another API: --url or RELAY_URL"
    ]
    assert ADMIN_TOKEN not in result.output


def test_a_bad_url_is_a_usage_error() -> None:
    result = run(dlq, ["list", "--url", "127.0.0.1:8000", "--token", ADMIN_TOKEN])

    assert result.exit_code == 2
    assert "not an absolute http(s) URL" in result.stderr


def test_a_rejected_token_shows_the_detail_but_never_the_token(fake_api: FakeRelay) -> None:
    result = run(dlq, ["list", "--url", fake_api.url, "--token", "wrong-token-123"])

    assert result.exit_code == 1
    assert stderr_lines(result) == ["relay: No valid API key or admin token (HTTP 401)"]
    assert "wrong-token-123" not in result.output


def test_submit_wait_gives_up_after_the_timeout(fake_api: FakeRelay) -> None:
    result = run(submit, as_tenant(fake_api, "echo", "--wait", "--timeout", "0.1"))

    assert result.exit_code == 1
    (task_id,) = fake_api.tasks
    assert stderr_lines(result)[-1] == f"relay: task {task_id} still not finished after 0.1 s"
    assert result.stdout == ""
