"""The operator console's overview at ``/console`` in a real Chromium: it moves while tasks run, asks again for a
token it was refused, and shows a tenant's key that tenant's own figures. Screenshots of each view are saved under
the path the first test prints."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.playwright_guard import expect
from tests.support import Receiver, run_receiver, wait_dead_letter, wait_until, webhook_attempts

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
NO_FIGURE = "\u2013"  # what a figure shows before there is one (an en dash)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console-screenshots")
    print(f"console screenshots: {path}")
    return path


def test_the_overview_moves_while_tasks_run(
    relay: Relay, page: Page, browser: Browser, receiver: Receiver, shots: Path
) -> None:
    page.goto(relay.api.url + "/console#token=admin-token")

    expect(page.locator("#scope")).to_have_text("every tenant")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    assert "token" not in page.url  # the fragment is gone from the address (and its history)
    before = page.evaluate("window.consoleState.last.tasks.submitted")
    tasks = [relay.client.submit("echo", {"n": n}) for n in range(100)]
    tasks += [relay.client.submit("echo", {"n": n}, webhook=receiver.url("/fast")) for n in range(20)]
    for task in tasks:
        relay.client.wait_task(task["id"])
    receiver.wait_for("/fast", 20)

    page.wait_for_function(
        "(n) => (window.consoleState.last?.tasks.submitted ?? 0) >= n", arg=before + 120, timeout=10_000
    )
    # Rates need figures a few seconds old: they come, and show the load.
    page.wait_for_function("() => (window.consoleState.last?.rates?.tasks_submitted ?? 0) > 0", timeout=15_000)
    expect(page.locator("#v-submitted")).not_to_have_text(NO_FIGURE)
    expect(page.locator("#v-ended")).not_to_have_text(NO_FIGURE)
    assert float(page.inner_text("#v-submitted").replace(",", "")) > 0
    points = page.get_attribute("#s-submitted", "points") or ""
    heights = {p.split(",")[1] for p in points.split()}
    assert len(heights) > 1  # the chart is not flat
    expect(page.locator("#tasks li[data-key='submitted'] .count")).not_to_have_text("0")
    # Latency: the last minutes' webhooks, in milliseconds within their buckets, and the tile says so.
    page.wait_for_function("() => (window.consoleState.last?.latency.delivered ?? 0) >= 20", timeout=15_000)
    expect(page.locator("#n-latency")).to_contain_text(re.compile(r"^\d+ deliveries in the last \d+ s"))
    p50, p99 = (float(v.replace(",", "")) for v in page.inner_text("#v-latency").split(" / "))
    assert 0 < p50 <= p99 < 1000
    # The storage card: one node holding every slot, the worker and the API process alive.
    expect(page.locator("#storage")).to_be_visible(timeout=15_000)
    expect(page.locator("#storage-summary")).to_contain_text(
        re.compile(r"^standalone: 1 master, 0 replicas, \d+ partition")
    )
    expect(page.locator("#storage-rows tr")).to_have_count(1)
    expect(page.locator("#storage-rows tr td").nth(1)).to_have_text("master")
    # Each cell names its column, which a phone shows beside it (the header row is hidden there).
    expect(page.locator("#storage-rows tr td").nth(1)).to_have_attribute("data-label", "role")
    expect(page.locator("#storage-processes")).to_contain_text("Workers alive: 1. API processes alive: 1.")
    page.screenshot(path=str(shots / "overview-desktop.png"), full_page=True)

    phone = browser.new_context(viewport=PHONE).new_page()
    try:
        phone.goto(relay.api.url + "/console#token=admin-token")
        expect(phone.locator("#live")).to_have_attribute("data-state", "live")
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
    finally:
        phone.context.close()


def test_a_refused_token_asks_again_with_why_and_a_good_one_opens_the_console(
    relay: Relay, page: Page, shots: Path
) -> None:
    page.goto(relay.api.url + "/console#token=not-a-token")

    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#token-error")).to_contain_text("That token was refused: unknown API key or token")
    assert page.evaluate("sessionStorage.getItem('relay:console:token')") is None
    page.screenshot(path=str(shots / "sign-in-refused.png"))

    page.fill("#token", "admin-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#scope")).to_have_text("every tenant")
    page.reload()  # the token is kept for the tab
    expect(page.locator("#scope")).to_have_text("every tenant")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()


def test_a_tenants_key_shows_that_tenants_figures_only(relay: Relay, page: Page) -> None:
    relay.client.submit("echo", "globex's", key="key-globex")
    page.goto(relay.api.url + "/console#token=key-acme")

    expect(page.locator("#scope")).to_have_text("tenant acme")
    acme = relay.client.get("/v1/stats", key="key-acme").json()
    page.wait_for_function("() => window.consoleState.last !== null")
    shown = page.evaluate("window.consoleState.last")
    assert shown["tenant"] == "acme"
    assert shown["tasks"]["submitted"] == acme["tasks"]["submitted"]
    assert shown["queue_depth"] is None  # the broker's queue is everyone's
    expect(page.locator("#v-queue")).to_contain_text(NO_FIGURE)
    page.wait_for_timeout(1500)
    expect(page.locator("#storage")).to_be_hidden()  # the storage is the operator's to see


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with run_receiver() as running:
        yield running


def dead_letters_of(relay: Relay, key: str, count: int) -> None:
    wait_until(
        lambda: relay.client.get("/v1/stats", key=key).json()["dead_letters"]["stored"] >= count,
        timeout_s=30,
        message=f"{count} dead letters",
    )


# Each time the bulk text changes: the "n of m" it says and the share of its track the bar covers on screen then.
WATCH_THE_BAR = """() => {
  window.barSteps = [];
  const text = document.getElementById("bulk-text");
  const bar = document.getElementById("bulk-bar");
  new MutationObserver(() => {
    const said = text.textContent.match(/(\\d+) of (\\d+)/);
    const drawn = bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width;
    if (said) window.barSteps.push([Number(said[1]), Number(said[2]), drawn]);
  }).observe(text, { childList: true, characterData: true, subtree: true });
}"""


def test_a_filtered_bulk_replay_after_the_receiver_is_back_reaches_it_once_each(
    relay: Relay, page: Page, receiver: Receiver, shots: Path
) -> None:
    url = receiver.script("/gone", 410)  # 410: a dead letter at once
    acme = [relay.client.submit("echo", {"n": n}, webhook=url)["id"] for n in range(200)]
    globex = [relay.client.submit("echo", {"n": n}, webhook=url, key="key-globex")["id"] for n in range(20)]
    dead_letters_of(relay, "key-acme", 200)
    dead_letters_of(relay, "key-globex", 20)
    before = len(receiver.on("/gone"))
    receiver.script("/gone", 200)  # the receiver is back

    page.goto(relay.api.url + "/console#token=admin-token")
    page.click("#tabs button[data-view='letters']")
    expect(page.locator("#letters-rows tr").first).to_be_visible()
    page.select_option("#f-reason", "endpoint_gone")
    page.fill("#f-tenant", "acme")
    page.click("#letters-filter button[type=submit]")
    expect(page.locator("#letters-rows tr td:nth-child(2)").first).to_have_text("acme")
    expect(page.locator("#letters-total")).to_have_text("200 dead letters match; showing 50.")
    page.screenshot(path=str(shots / "dead-letters-desktop.png"), full_page=True)
    page.click("#bulk-replay")
    expect(page.locator("#bulk-text")).to_contain_text("200 dead letters match")
    page.screenshot(path=str(shots / "bulk-replay-dry-run.png"))
    page.evaluate(WATCH_THE_BAR)
    page.click("#bulk-go")
    page.wait_for_function("() => window.consoleState.bulk?.done === 200", timeout=60_000)
    expect(page.locator("#bulk-text")).to_contain_text(
        "Replayed 200 of 200. They leave this list as they are delivered."
    )
    steps = page.evaluate("window.barSteps")
    assert len(steps) >= 200
    assert steps[-1] == [200, 200, pytest.approx(1.0, abs=0.01)]
    lagging = [step for step in steps if abs(step[2] - step[0] / step[1]) > 0.01]
    assert lagging == []  # each "n of 200" with a bar at n/200, as drawn at that moment

    wait_until(lambda: len(receiver.on("/gone")) - before >= 200, timeout_s=30, message="the 200 replays")
    origin = receiver.url("").rstrip("/")
    wait_until(  # nothing more comes: nothing is owed to the receiver any more, none in flight
        lambda: (
            {
                (d["owed"], d["in_flight"])
                for d in relay.client.get("/v1/destinations", key="admin-token").json()["items"]
                if d["origin"] == origin
            }
            == {(0, 0)}
        ),
        message="nothing owed to the receiver",
    )
    replayed = [r.json()["task_id"] for r in receiver.on("/gone")[before:]]
    assert sorted(replayed) == sorted(acme)  # each of acme's once, none of globex's
    assert not set(replayed) & set(globex)


def test_a_dead_letter_opens_with_its_event_and_attempts_and_a_tenant_sees_its_own_only(
    relay: Relay, page: Page, receiver: Receiver, browser: Browser, shots: Path
) -> None:
    url = receiver.script("/gone-again", 410)
    task = relay.client.submit("echo", "mine", webhook=url, key="key-globex")
    relay.client.submit("echo", "acme's", webhook=url)
    wait_until(
        lambda: relay.client.get("/v1/dead-letters", key="key-globex", params={"task_id": task["id"]}).json()["items"],
        message="the dead letter",
    )

    page.goto(relay.api.url + "/console#token=key-globex")
    page.click("#tabs button[data-view='letters']")
    expect(page.locator("#f-tenant-field")).to_be_hidden()
    expect(page.locator("#letters-rows tr").first).to_be_visible()
    tenants = set(page.locator("#letters-rows tr td:nth-child(2)").all_inner_texts())
    assert tenants == {"globex"}
    page.fill("#f-task", task["id"])
    page.click("#letters-filter button[type=submit]")
    expect(page.locator("#letters-rows tr")).to_have_count(1)
    expect(page.locator("#letters-total")).to_have_text("1 dead letter matches.")
    page.click("#letters-rows tr")
    expect(page.locator("#letters-rows tr")).to_have_attribute("aria-selected", "true")  # its row is highlighted
    expect(page.locator("#letter-fields")).to_contain_text("endpoint gone")
    expect(page.locator("#letter-event")).to_contain_text(task["id"])
    expect(page.locator("#letter-attempts li")).to_contain_text(["webhook #1 · failed 410"])
    page.screenshot(path=str(shots / "dead-letter-open.png"), full_page=True)
    page.click("#letter-close")
    expect(page.locator("#letter")).to_be_hidden()
    expect(page.locator("#letters-rows tr")).to_have_attribute("aria-selected", "false")

    # A "since" after its "until" matches nothing: the page says so rather than showing an empty list.
    page.fill("#f-task", "")
    page.fill("#f-since", "2026-12-07T12:00")
    page.fill("#f-until", "2026-12-07T11:00")
    page.click("#letters-filter button[type=submit]")
    expect(page.locator("#letters-error")).to_contain_text('"Since" (2026-12-07 12:00:00Z) is after "until"')
    expect(page.locator("#letters-rows tr")).to_have_count(0)
    expect(page.locator("#f-since")).to_have_attribute("aria-invalid", "true")
    page.click("#tabs button[data-view='tasks']")
    page.fill("#t-since", "2026-12-07T12:00")
    page.fill("#t-until", "2026-12-07T11:00")
    page.click("#tasks-filter button[type=submit]")
    expect(page.locator("#tasks-error")).to_contain_text("nothing can match")
    expect(page.locator("#tasks-rows tr")).to_have_count(0)

    phone = browser.new_context(viewport=PHONE).new_page()
    try:
        phone.goto(relay.api.url + "/console#token=key-globex")
        phone.click("#tabs button[data-view='letters']")
        expect(phone.locator("#letters-rows tr").first).to_be_visible()
        phone.screenshot(path=str(shots / "dead-letters-phone.png"), full_page=True)
    finally:
        phone.context.close()


def test_deleting_by_filter_shows_the_count_first_and_deletes_only_those(
    relay: Relay, page: Page, receiver: Receiver
) -> None:
    url = receiver.script("/gone-for-good", 410)
    for n in range(30):
        relay.client.submit("echo", n, webhook=url, key="key-globex")
    relay.client.submit("echo", "kept", webhook=url)
    wait_until(
        lambda: (
            len(relay.client.get("/v1/dead-letters", key="key-globex", params={"limit": 500}).json()["items"]) >= 30
        ),
        message="globex's dead letters",
    )
    acme_before = relay.client.get("/v1/stats", key="key-acme").json()["dead_letters"]["stored"]
    page.goto(relay.api.url + "/console#token=admin-token")
    page.click("#tabs button[data-view='letters']")
    page.fill("#f-tenant", "globex")
    page.click("#bulk-purge")
    expect(page.locator("#bulk-text")).to_contain_text("dead letters match")
    expect(page.locator("#bulk-text")).to_contain_text("cannot be replayed")
    matched = int(page.inner_text("#bulk-go").split()[-1])
    assert matched >= 30
    page.click("#bulk-go")
    page.wait_for_function("(n) => window.consoleState.bulk?.done === n", arg=matched, timeout=60_000)

    assert relay.client.get("/v1/dead-letters", key="key-globex").json()["items"] == []
    wait_until(
        lambda: relay.client.get("/v1/stats", key="key-acme").json()["dead_letters"]["stored"] >= acme_before,
        message="acme's letters untouched",
    )
    assert relay.client.get("/v1/dead-letters", key="key-acme").json()["items"]


def test_pausing_a_destination_from_the_page_holds_its_webhooks_and_resuming_drains_them(
    relay: Relay, page: Page, shots: Path
) -> None:
    with run_receiver() as own:
        url = own.url("/held")
        relay.client.submit("echo", "first", webhook=url)
        own.wait_for("/held")
        origin = url.rsplit("/", 1)[0]
        page.goto(relay.api.url + "/console#token=admin-token")
        page.click("#tabs button[data-view='destinations']")
        row = page.locator("#dst-rows tr", has_text=origin)
        expect(row).to_have_count(1)
        expect(row.locator(".badge")).to_have_text("healthy")

        row.locator("button", has_text="Pause").click()
        expect(row.locator(".badge")).to_have_text("paused")
        held = [relay.client.submit("echo", n, webhook=url)["id"] for n in range(10)]
        for task_id in held:
            assert relay.client.wait_task(task_id)["status"] == "succeeded"

        def destination() -> dict[str, Any]:
            items = relay.client.get("/v1/destinations", key="admin-token").json()["items"]
            return next(d for d in items if d["origin"] == origin)

        # Every one of the ten is owed, none in flight: held, where a healthy destination would have sent them.
        wait_until(lambda: (destination()["owed"], destination()["in_flight"]) == (10, 0), message="ten held")
        assert len(own.on("/held")) == 1  # none of the ten went out
        page.click("#dst-filter button[type=submit]")
        expect(row.locator("td:nth-child(5)")).to_have_text("10")  # owed, shown at once
        page.screenshot(path=str(shots / "destinations-paused.png"), full_page=True)

        row.locator("button", has_text="Resume").click()
        expect(row.locator(".badge")).not_to_have_text("paused")
        hooks = own.wait_for("/held", 11, timeout_s=20)
        assert sorted(h.json()["task_id"] for h in hooks[1:]) == sorted(held)

        row.locator("button", has_text="Caps").click()
        page.fill("#caps-max", "3")
        page.fill("#caps-rate", "5")
        page.click("#caps-form button[type=submit]")
        expect(page.locator("#caps-result")).to_have_text("Saved: at most 3 at once, 5/s.")
        expect(row.locator("td:nth-child(8)")).to_have_text("3 at once · 5/s")
        dst_id = row.get_attribute("data-id")
        shown = relay.client.get(f"/v1/destinations/{dst_id}", key="admin-token").json()
        assert (shown["max_in_flight"], shown["rate_per_s"]) == (3, 5.0)
        page.fill("#caps-max", "0")  # out of range: the form says so and sends nothing
        page.click("#caps-form button[type=submit]")
        assert page.eval_on_selector("#caps-max", "el => el.validity.rangeUnderflow")
        again = relay.client.get(f"/v1/destinations/{dst_id}", key="admin-token").json()
        assert again["max_in_flight"] == 3


def test_a_tasks_timeline_shows_its_retried_webhook_and_a_running_task_is_cancelled_from_the_page(
    relay: Relay, page: Page, receiver: Receiver, browser: Browser, shots: Path
) -> None:
    url = receiver.script("/retried-hook", 500, 200)
    retried = relay.client.submit("echo", "again", webhook=url)
    receiver.wait_for("/retried-hook", 2)
    running = relay.client.submit("sleep", {"seconds": 60})
    wait_until(lambda: relay.client.task(running["id"])["status"] == "running", message="the sleep to run")

    page.goto(relay.api.url + "/console#token=admin-token")
    page.click("#tabs button[data-view='tasks']")
    expect(page.locator("#tasks-rows tr").first).to_be_visible()
    page.fill("#t-id", retried["id"])
    page.click("#task-find button[type=submit]")
    expect(page.locator("#task-status")).to_have_text("succeeded")
    timeline = page.locator("#task-timeline li")
    expect(timeline).to_contain_text(
        ["event #1 completed", "webhook #1 · failed 500 (event #1)", "webhook #2 · delivered 200 (event #1)"]
    )
    page.screenshot(path=str(shots / "task-timeline.png"), full_page=True)

    page.select_option("#t-status", "running")
    page.click("#tasks-filter button[type=submit]")
    # The filtered list first: a click while the table is being replaced lands on whichever row is under it then.
    expect(page.locator("#tasks-rows tr")).to_have_count(1)
    page.locator("#tasks-rows tr", has_text=running["id"]).click()
    expect(page.locator("#task-status")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#task-cancel")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    expect(page.locator("#task-cancel")).to_be_hidden()
    assert relay.client.task(running["id"])["status"] == "cancelled"

    # Another token sees nothing of what the last one had open.
    page.click("#sign-out")
    page.fill("#token", "key-globex")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#scope")).to_have_text("tenant globex")
    page.click("#tabs button[data-view='tasks']")
    expect(page.locator("#task")).to_be_hidden()
    expect(page.locator("#tasks-rows tr", has_text=running["id"])).to_have_count(0)

    other = browser.new_context().new_page()  # another tenant's key: the task is not there
    try:
        other.goto(relay.api.url + "/console#token=key-globex")
        other.click("#tabs button[data-view='tasks']")
        other.fill("#t-id", retried["id"])
        other.click("#task-find button[type=submit]")
        expect(other.locator("#tasks-error")).to_contain_text(f"no task {retried['id']}")
        expect(other.locator("#task")).to_be_hidden()
    finally:
        other.context.close()


# Every cell of a table lies inside its card, shows all it holds (nothing cut, nothing behind a sideways scroll),
# and the page itself does not scroll sideways.
LAYOUT_PROBLEMS = """(selector) => {
  const problems = [];
  const table = document.querySelector(selector);
  const card = table.closest(".card").getBoundingClientRect();
  const whole = table.getBoundingClientRect();
  if (whole.right > card.right + 1 || whole.left < card.left - 1) {
    problems.push(`${selector} is ${Math.round(whole.width)} px wide in a card of ${Math.round(card.width)} px`);
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1) {
    problems.push(`the page is ${document.documentElement.scrollWidth} px wide at ${window.innerWidth}`);
  }
  for (const cell of table.querySelectorAll("tbody td")) {
    const box = cell.getBoundingClientRect();
    const what = `${selector} cell "${cell.textContent.slice(0, 40)}"`;
    if (cell.textContent.trim() && (box.width < 1 || box.height < 1)) problems.push(`${what} is not shown`);
    if (box.right > card.right + 1 || box.left < card.left - 1) problems.push(`${what} lies outside its card`);
    if (cell.scrollWidth > cell.clientWidth + 1) problems.push(`${what} is cut`);
    for (const part of cell.querySelectorAll("*")) {
      const inner = part.getBoundingClientRect();
      if (inner.right > card.right + 1) problems.push(`${what}: its ${part.tagName} lies outside its card`);
    }
  }
  return problems;
}"""


@pytest.mark.parametrize(
    "viewport",
    [{"width": 1366, "height": 768}, {"width": 1024, "height": 768}, PHONE],
    ids=["1366px", "1024px", "390px"],
)
def test_every_table_fits_its_card_with_every_column_in_view(
    relay: Relay, browser: Browser, receiver: Receiver, shots: Path, viewport: dict[str, int]
) -> None:
    with socket.socket() as unused:  # a port nothing listens on: connection refused, a long last error
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}/nobody-home"
    task = relay.client.submit("echo", "refused", webhook=refused)
    wait_until(
        lambda: relay.client.get("/v1/dead-letters", params={"task_id": task["id"]}).json()["items"],
        timeout_s=30,
        message="the refused webhook dead-lettered",
    )
    relay.client.submit("echo", "gone", webhook=receiver.script("/gone-wide", 410))
    dead_letters_of(relay, "key-acme", 1)

    tab = browser.new_context(viewport=viewport).new_page()  # type: ignore[arg-type]
    try:
        tab.goto(relay.api.url + "/console#token=admin-token")
        for view, table in (("letters", "#letters-rows"), ("destinations", "#dst-rows"), ("tasks", "#tasks-rows")):
            tab.click(f"#tabs button[data-view='{view}']")
            expect(tab.locator(f"{table} tr").first).to_be_visible()
            if view == "destinations":
                expect(tab.locator(f"{table} tr", has_text="127.0.0.1").first).to_be_visible()
            tab.screenshot(path=str(shots / f"{view}-{viewport['width']}.png"), full_page=True)
            problems = tab.evaluate(LAYOUT_PROBLEMS, table)
            assert problems == [], f"{view} at {viewport['width']} px: {problems}"
    finally:
        tab.context.close()


def test_a_replayed_webhook_shows_its_dead_letter_and_its_replay_in_the_tasks_timeline(
    relay: Relay, page: Page, receiver: Receiver, shots: Path
) -> None:
    url = receiver.script("/back-later", 500, 500, 500, 500, 200)  # four attempts fail; the replay is answered 200
    task = relay.client.submit("echo", "again", webhook=url)
    letter = wait_dead_letter(relay.client, task["id"], timeout_s=30)
    if "steps" not in relay.client.get(f"/v1/tasks/{task['id']}/deliveries").json():
        pytest.skip("this API's deliveries list no dead-lettered or replayed steps")
    assert relay.client.post(f"/v1/dead-letters/{letter['id']}/replay", key="admin-token").status_code == 202
    receiver.wait_for("/back-later", 5)
    wait_until(
        lambda: any(a["outcome"] == "delivered" for a in webhook_attempts(relay.client, task["id"])),
        message="the replay delivered",
    )

    page.goto(relay.api.url + "/console#token=admin-token")
    page.click("#tabs button[data-view='tasks']")
    page.fill("#t-id", task["id"])
    page.click("#task-find button[type=submit]")

    expect(page.locator("#task-timeline li")).to_contain_text(
        [
            "event #1 completed",
            "webhook #4 · failed 500 (event #1)",
            f"webhook dead-lettered · retries exhausted · {letter['id']} (event #1)",
            f"webhook replayed · sent again from {letter['id']} (event #1)",
            "· delivered 200 (event #1)",
        ]
    )
    page.screenshot(path=str(shots / "task-timeline-replayed.png"), full_page=True)
