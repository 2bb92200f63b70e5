"""Flow control per destination, against a real Redis with the clock passed in: caps, isolation, the breaker,
Retry-After, pause, leases of dead workers, held webhooks that outlive their retry span, fencing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.destinations import DestinationStore, FlowSettings, breaker_outcome, destination_for, origin_of
from delivery.outbox import Kind, Lease, Outbox, Recorded, webhook_attempt
from delivery.policy import AttemptResult, Decision, Verdict
from delivery.records import PendingDelivery
from schemas.dead_letters import DeadLetterReason
from schemas.destinations import DestinationCaps, DestinationState
from schemas.events import Event, EventType
from tests.placed import event_id, home, placed, task_id, url_in

FLOW = FlowSettings(max_in_flight=2, breaker_threshold=3, probe_s=5.0, lease_s=120.0, retry_span_s=305.0)
OK = AttemptResult(200, None, 1.0)
DOWN = AttemptResult(None, "cannot connect: connection refused", 1.0)
BUSY = AttemptResult(503, "HTTP 503", 1.0, retry_after_s=60.0)
SCHEDULE = (5.0, 300.0)


@pytest.fixture
def outbox(redis: aioredis.Redis) -> Outbox:
    return Outbox(redis=redis, flow=FLOW, attempts_ttl_s=3600, dead_letter_retention_s=3600)


@pytest.fixture
def store(redis: aioredis.Redis) -> DestinationStore:
    return DestinationStore(redis=redis, flow=FLOW)


_n = 0


async def owe(redis: aioredis.Redis, outbox: Outbox, url: str, count: int, tenant: str = "acme") -> list[Lease]:
    """``count`` webhooks owed to ``url``'s destination; the leases of those it let start at once."""
    global _n
    leases = []
    for _ in range(count):
        _n += 1
        task = task_id(f"task_{_n}", tenant, url)
        event = Event(
            id=event_id(f"evt_{_n}", task),
            type=EventType.COMPLETED,
            task_id=task,
            seq=1,
            created_at=datetime.now(UTC),
            data={"status": "succeeded", "result": _n},
        )
        delivery = PendingDelivery(tenant=tenant, task_id=event.task_id, url=url, event=event)
        await redis.set(keys.delivery(event.id), msgspec.json.encode(delivery))
        lease = await outbox.handoff(delivery)
        if lease is not None:
            leases.append(lease)
    return leases


async def settle(outbox: Outbox, lease: Lease, result: AttemptResult, *, now: float | None = None) -> Recorded:
    """Record ``result`` for ``lease`` as the engine does."""
    from delivery.policy import decide

    probe = lease.kind == Kind.PROBE and breaker_outcome(result) == "fail"
    decision = decide(result, run_attempts=lease.delivery.run_attempts + 1, schedule_s=SCHEDULE, jitter=0, probe=probe)
    attempt = webhook_attempt(
        lease.delivery,
        at=datetime.now(UTC),
        status_code=result.status_code,
        error=result.error,
        duration_ms=1.0,
        delivered=result.ok,
    )
    return await outbox.record(lease.delivery, attempt, decision, token=lease.token, result=result, now=now)


def ids(leases: list[Lease]) -> list[str]:
    return [lease.delivery.event_id for lease in leases]


async def test_origin_ignores_path_query_and_default_port() -> None:
    assert origin_of("https://Example.com:443/a?b=1") == "https://example.com"
    assert origin_of("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080"
    assert origin_of("http://[::1]:9/x") == "http://[::1]:9"
    a = destination_for("acme", "https://example.com/one")
    assert a == destination_for("acme", "https://example.com/two?x")
    assert a.id != destination_for("other", "https://example.com/one").id
    assert a.id.startswith("dst_")


async def test_at_most_max_in_flight_start_and_a_settle_frees_a_slot(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://a.test/hook"
    started = await owe(redis, outbox, url, 5)  # numbered _n - 4 to _n
    assert len(started) == 2  # the cap; the other three wait in the destination, oldest first
    assert await outbox.claim_destinations(home("acme", url), limit=100) == []
    # The freed slot goes straight to the oldest waiting webhook, leased to whoever settled.
    handed = (await settle(outbox, started[0], OK)).next
    assert handed is not None
    assert handed.delivery.event_id == placed(f"evt_{_n - 2}", home("acme", url))
    assert await outbox.claim_destinations(home("acme", url), limit=100) == []  # at the cap again


async def test_a_destination_at_its_cap_with_many_owed_costs_others_nothing(
    redis: aioredis.Redis, outbox: Outbox
) -> None:
    url = "http://slow.test/"
    await owe(redis, outbox, url, 2000)  # two in flight, 1,998 waiting
    # Another tenant's receiver whose destination shares the slow one's partition (so its claim meets both).
    fast = await owe(redis, outbox, url_in(home("acme", url), "other", "http://fast{}.test/"), 1, tenant="other")
    assert len(fast) == 1
    await settle(outbox, fast[0], DOWN)  # due again in 5 s
    claimed = await outbox.claim_destinations(home("acme", url), limit=200, now=time.time() + 6)
    assert ids(claimed) == ids(fast)  # nothing of the slow one's: its cap is full
    # The claim looked at the ready destinations only: the slow one is not ready before its leases run out.
    ready = await redis.zrange(home("acme", url).destinations_ready, 0, -1, withscores=True)
    slow = destination_for("acme", url)
    assert {k.decode(): v for k, v in ready}[slow.id] > time.time() + 100


async def test_breaker_opens_holds_probes_with_doubling_wait_and_closes(
    redis: aioredis.Redis, outbox: Outbox, store: DestinationStore
) -> None:
    url = "http://down.test/"
    dst = destination_for("acme", url)
    changes = [(await settle(outbox, lease, DOWN)).change for lease in await owe(redis, outbox, url, 2)]
    changes += [
        (await settle(outbox, lease, DOWN)).change
        for lease in await outbox.claim_destinations(home("acme", url), limit=9, now=time.time() + 6)
    ]
    assert changes[:2] == ["", ""]
    assert "opened" in changes[2:]
    now = time.time()
    await owe(redis, outbox, url, 20)
    view = await store.get(dst.id)
    assert view is not None
    assert view.state is DestinationState.OPEN
    assert view.owed == 22
    # Held: nothing before the probe time, however long the held webhooks have been due.
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=now + 4) == []
    probe = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 5.5)
    assert [lease.kind for lease in probe] == [Kind.PROBE]
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=now + 5.6) == []  # one probe at a time
    assert (await settle(outbox, probe[0], DOWN, now=now + 6)).change == ""
    assert (
        await outbox.claim_destinations(home("acme", url), limit=100, now=now + 6 + 9) == []
    )  # the wait doubled to 10 s
    probe = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 6 + 10.5)
    assert len(probe) == 1
    recovered = await settle(outbox, probe[0], OK, now=now + 17)
    assert recovered.change == "recovered"
    assert recovered.next is not None  # the probe's slot, handed to the oldest held webhook
    drained = [recovered.next, *await outbox.claim_destinations(home("acme", url), limit=100, now=now + 17.5)]
    assert len(drained) == 2  # within the cap
    assert all(lease.kind == Kind.SEND for lease in drained)
    view = await store.get(dst.id)
    assert view is not None
    assert view.state is DestinationState.HEALTHY
    assert view.consecutive_failures == 0


async def test_retry_after_holds_the_whole_destination(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://busy.test/"
    started = await owe(redis, outbox, url, 4)
    now = time.time()
    await settle(outbox, started[0], BUSY, now=now)
    assert (
        await outbox.claim_destinations(home("acme", url), limit=100, now=now + 59) == []
    )  # a free slot, due webhooks: held
    assert (
        len(await outbox.claim_destinations(home("acme", url), limit=100, now=now + 61)) == 1
    )  # one slot free (one in flight)


async def test_pause_holds_everything_and_resume_drains_within_the_cap(
    redis: aioredis.Redis, outbox: Outbox, store: DestinationStore
) -> None:
    url = "http://paused.test/"
    dst = destination_for("acme", url)
    for lease in await owe(redis, outbox, url, 2):
        await settle(outbox, lease, OK)
    paused = await store.change(dst.id, "pause")
    assert paused is not None
    assert paused.state is DestinationState.PAUSED
    assert await owe(redis, outbox, url, 5) == []
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 86400 * 3) == []
    await store.change(dst.id, "resume")
    assert len(await outbox.claim_destinations(home("acme", url), limit=100)) == 2
    assert await store.change("dst_missing", "pause") is None


async def test_a_dead_workers_leases_come_back_after_the_lease(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://a.test/"
    lost = await owe(redis, outbox, url, 3)
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 100) == []
    back = await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 121)
    assert sorted(ids(back)) == sorted(ids(lost))  # the slots and the webhooks, not the third one yet
    # The dead worker's late outcome no longer counts: another attempt holds the delivery now.
    assert (await settle(outbox, lost[0], OK)).change == ""
    assert await redis.exists(keys.delivery(lost[0].delivery.event_id)) == 1


async def test_held_webhooks_dead_letter_only_after_their_retry_span(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://gone-for-days.test/"
    first = await owe(redis, outbox, url, 2)
    for lease in first:
        await settle(outbox, lease, DOWN)
    again = await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 6)
    assert (await settle(outbox, again[0], DOWN, now=time.time() + 6)).change == "opened"
    never_tried = await owe(redis, outbox, url, 3)  # owed while open: held, never attempted
    assert never_tried == []
    # Open: the retry span (305 s here) since they were first owed has not passed, nothing is dead yet.
    claimed = await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 200)
    assert [c.kind for c in claimed] == [Kind.PROBE]
    assert (await settle(outbox, claimed[0], DOWN, now=time.time() + 201)).change == ""
    expired = await outbox.claim_destinations(home("acme", url), limit=100, now=time.time() + 400)
    assert [c.kind for c in expired] == [Kind.EXPIRE] * 5  # all of them, with no attempt between
    for lease in expired:
        recorded = await outbox.record(
            lease.delivery, None, Decision(Verdict.DEAD, reason=DeadLetterReason.RETRIES_EXHAUSTED), token=lease.token
        )
        assert recorded.dead is not None
        assert recorded.dead.reason is DeadLetterReason.RETRIES_EXHAUSTED
    assert await redis.zcard(home("acme", url).dead_letters) == 5


async def test_rate_per_s_spaces_the_starts(redis: aioredis.Redis, outbox: Outbox, store: DestinationStore) -> None:
    url = "http://rated.test/"
    dst = destination_for("acme", url)
    for lease in await owe(redis, outbox, url, 1):
        await settle(outbox, lease, OK)
    await store.change(dst.id, "set", 100, 2.0)
    now = time.time()
    started = await owe(redis, outbox, url, 10)
    assert len(started) == 2  # the bucket's burst: one second of the rate
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=now + 0.05) == []
    assert len(await outbox.claim_destinations(home("acme", url), limit=100, now=now + 0.6)) == 1
    assert await outbox.claim_destinations(home("acme", url), limit=100, now=now + 0.7) == []
    assert len(await outbox.claim_destinations(home("acme", url), limit=100, now=now + 1.15)) == 1
    view = await store.get(dst.id)
    assert view is not None
    assert view.rate_per_s == 2.0
    assert view.max_in_flight == 100


async def test_the_probe_is_the_webhook_waiting_longest(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://probed.test/"
    first, second = await owe(redis, outbox, url, 2)
    now = time.time()
    await settle(outbox, second, DOWN, now=now)  # waiting since now ...
    await settle(outbox, first, DOWN, now=now + 0.1)  # ... and this one a moment later
    retries = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 6)
    assert ids(retries) == [second.delivery.event_id, first.delivery.event_id]
    # Their retries come back in the other order: the probe still goes to the one that has waited longest.
    assert (await settle(outbox, retries[1], DOWN, now=now + 6)).change == "opened"
    await settle(outbox, retries[0], DOWN, now=now + 6.1)
    probe = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 11.5)
    assert [(p.kind, p.delivery.event_id) for p in probe] == [(Kind.PROBE, second.delivery.event_id)]


async def _claim_commands(redis: aioredis.Redis, outbox: Outbox, partition: keys.Partition) -> tuple[int, list[Lease]]:
    """Redis commands one claim of ``partition`` ran (inside its Lua step included), and what it leased."""
    await redis.config_resetstat()
    leases = await outbox.claim_destinations(partition, limit=200)
    stats = await redis.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_info"))
    return calls, leases


async def test_what_an_open_destination_holds_costs_the_claim_nothing(redis: aioredis.Redis, outbox: Outbox) -> None:
    """The claim does the same work whether an open destination holds ten webhooks or a hundred thousand."""
    url = "http://down-with-a-backlog.test/"
    for lease in await owe(redis, outbox, url, 2):
        await settle(outbox, lease, DOWN)
    (again, _) = await outbox.claim_destinations(home("acme", url), limit=2, now=time.time() + 6)
    assert (await settle(outbox, again, DOWN)).change == "opened"
    _, due, _, deadline = destination_for("acme", url).keys
    # Another tenant's healthy receiver whose destination shares the open one's partition: its claim meets both.
    fine_url = url_in(home("acme", url), "other", "http://fine{}.test/")
    fine = destination_for("other", fine_url)

    async def hold(start: int, stop: int) -> None:  # a held backlog, written straight into the destination's keys
        for first in range(start, stop, 10_000):
            members = {f"evt_held_{n}": time.time() for n in range(first, min(stop, first + 10_000))}
            await redis.zadd(due, members)
            await redis.zadd(deadline, dict.fromkeys(members, time.time() + 86400))

    async def claim_one_healthy() -> int:
        owed = await owe(redis, outbox, fine_url, 1, tenant="other")
        await settle(outbox, owed[0], DOWN)  # owed again in 5 s; made due now below
        await redis.zadd(fine.keys[1], {owed[0].delivery.event_id: 0})
        await redis.zadd(home("acme", url).destinations_ready, {fine.id: 0})
        calls, leased = await _claim_commands(redis, outbox, home("acme", url))
        assert ids(leased) == ids(owed)
        await settle(outbox, leased[0], OK)
        return calls

    await hold(0, 10)
    small = await claim_one_healthy()
    await hold(10, 100_000)
    large = await claim_one_healthy()
    assert small == large < 40


async def opened(redis: aioredis.Redis, outbox: Outbox, url: str, now: float) -> list[Lease]:
    """``url``'s destination opened by three failures (two owed, then a retry); the other retry's lease too."""
    for lease in await owe(redis, outbox, url, 2):
        await settle(outbox, lease, DOWN, now=now)
    retries = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 6)
    assert (await settle(outbox, retries[0], DOWN, now=now + 6)).change == "opened"
    return retries[1:]


async def test_a_probe_whose_record_is_gone_does_not_stop_the_probing(redis: aioredis.Redis, outbox: Outbox) -> None:
    url = "http://record-gone.test/"
    now = time.time()
    (other,) = await opened(redis, outbox, url, now)
    await settle(outbox, other, DOWN, now=now + 6)
    oldest = await redis.zrange(destination_for("acme", url).keys[3], 0, -1)  # by the time first owed
    await redis.delete(keys.delivery(oldest[0].decode()))  # purged meanwhile, say
    assert (
        await outbox.claim_destinations(home("acme", url), limit=100, now=now + 11.5) == []
    )  # the probe found nothing to send
    probe = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 12)
    assert [(p.kind, p.delivery.event_id) for p in probe] == [(Kind.PROBE, other.delivery.event_id)]


async def _probe_out_past_the_span(redis: aioredis.Redis, outbox: Outbox, url: str, now: float) -> tuple[Lease, Lease]:
    """An open destination whose probe is still out when the held webhooks' span ends; the probe and the one
    expired then."""
    (other,) = await opened(redis, outbox, url, now)
    await settle(outbox, other, DOWN, now=now + 6)
    (probe,) = await outbox.claim_destinations(
        home("acme", url), limit=1, now=now + 300
    )  # the span is 305 s: still out at 306
    assert probe.kind == Kind.PROBE
    expired = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 306)
    assert [(e.kind, e.delivery.event_id) for e in expired] == [(Kind.EXPIRE, other.delivery.event_id)]
    return probe, expired[0]


async def test_an_attempt_in_flight_is_never_expired_under_it(redis: aioredis.Redis, outbox: Outbox) -> None:
    now = time.time()
    probe, _ = await _probe_out_past_the_span(redis, outbox, "http://slow-probe.test/", now)
    assert (await settle(outbox, probe, OK, now=now + 307)).change == "recovered"  # its lease was its own: it counts


async def test_a_lost_expire_lease_expires_again(redis: aioredis.Redis, outbox: Outbox) -> None:
    now = time.time()
    url = "http://lost-expire.test/"
    probe, expire = await _probe_out_past_the_span(redis, outbox, url, now)
    await settle(outbox, probe, DOWN, now=now + 307)  # still down: owed again, past its span too
    again = await outbox.claim_destinations(
        home("acme", url), limit=100, now=now + 306 + 121
    )  # the expire lease ran out
    assert sorted((e.kind, e.delivery.event_id) for e in again) == sorted(
        (Kind.EXPIRE, lease.delivery.event_id) for lease in (probe, expire)
    )


async def test_a_probe_the_receiver_answers_with_a_4xx_closes_the_circuit(
    redis: aioredis.Redis, outbox: Outbox, store: DestinationStore
) -> None:
    url = "http://answers-400.test/"
    now = time.time()
    (other,) = await opened(redis, outbox, url, now)
    await settle(outbox, other, DOWN, now=now + 6)
    probe = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 11.5)
    assert (await settle(outbox, probe[0], AttemptResult(400, "HTTP 400", 1.0), now=now + 12)).change == "recovered"
    view = await store.get(destination_for("acme", url).id)
    assert view is not None
    assert view.state is DestinationState.DEGRADED  # up, but its last attempt failed
    assert view.consecutive_failures == 0


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b'{"max_in_flight": 1}', True),
        (b'{"max_in_flight": 0}', False),
        (b'{"max_in_flight": 1001}', False),
        (b'{"rate_per_s": 0.01}', True),
        (b'{"rate_per_s": 0.001}', False),  # slower would hold a destination's webhooks for days
        (b'{"rate_per_s": 100001}', False),
        (b'{"rate_per_s": null}', True),
        (b'{"other": 1}', False),
    ],
)
def test_caps_a_patch_may_set(body: bytes, ok: bool) -> None:
    try:
        msgspec.json.decode(body, type=DestinationCaps)
    except msgspec.ValidationError:
        assert not ok
    else:
        assert ok


async def test_counts_by_state_owed_and_held_agree_with_the_destinations_themselves(
    redis: aioredis.Redis, store: DestinationStore
) -> None:
    now = time.time()
    states = [
        ("acme", {"failures": 0, "last_success_at": now}),  # healthy
        ("acme", {"failures": 2, "last_failure_at": now}),  # degraded
        ("acme", {"failures": 0, "last_failure_at": now, "last_success_at": now - 5}),  # degraded: last one failed
        ("acme", {"failures": 3, "opened_at": now, "next_probe_at": now + 5}),  # open
        ("globex", {"failures": 0, "paused": "1"}),  # paused
    ]
    for n, (tenant, fields) in enumerate(states):
        dst = destination_for(tenant, f"https://r{n}.example/hook")
        meta, due, flight, _ = dst.keys
        await redis.hset(meta, mapping={"tenant": tenant, "origin": dst.origin, "created_at": now, **fields})
        await redis.zadd(due, {f"evt_{n}_{k}": now for k in range(n + 1)})
        await redis.zadd(flight, {f"evt_{n}_live": int((now + 60) * 1000), f"evt_{n}_stale": int((now - 60) * 1000)})
        await redis.sadd(keys.of(dst.id).destinations, dst.id)
        await redis.sadd(keys.of(dst.id).destinations_of(tenant), dst.id)

    for tenant in (None, "acme", "globex"):
        listed = await store.all(tenant)
        counts = await store.counts(tenant)
        assert counts.by_state == {s: sum(d.state is s for d in listed) for s in DestinationState}
        assert counts.owed == sum(d.owed for d in listed)
        held = (DestinationState.OPEN, DestinationState.PAUSED)
        assert counts.held == sum(d.owed - d.in_flight for d in listed if d.state in held)
    everyone = await store.counts()
    assert {s.value: n for s, n in everyone.by_state.items()} == {"healthy": 1, "degraded": 2, "open": 1, "paused": 1}
    assert everyone.owed == sum(n + 1 + 2 for n in range(5))  # due, plus the live and the stale lease


async def test_a_replay_into_an_open_destination_is_its_next_probe_and_never_expires_untried(
    redis: aioredis.Redis, outbox: Outbox
) -> None:
    url = "http://replayed-into-open.test/"
    now = time.time()
    (other,) = await opened(redis, outbox, url, now)
    await settle(outbox, other, DOWN, now=now + 6)
    task = task_id("task_replayed", "acme", url)
    event = Event(
        id=event_id("evt_replayed", task),
        type=EventType.COMPLETED,
        task_id=task,
        seq=1,
        created_at=datetime.now(UTC),
        data={"status": "succeeded", "result": 1},
    )
    replay = PendingDelivery(
        tenant="acme",
        task_id=event.task_id,
        url=url,
        event=event,
        attempts=3,
        dead_letter_id=event_id("dl_replayed", task),
    )
    await redis.set(keys.delivery(event.id), msgspec.json.encode(replay))
    assert await outbox.handoff(replay) is None  # held by the open circuit
    # Past every retry span (305 s here) and the probe's wait: the webhooks held longest expire, the replay is the
    # probe (a replay is a request for a real attempt, not for another dead letter).
    claimed = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 400)
    kinds = {c.delivery.event_id: c.kind for c in claimed}
    assert kinds[event.id] == Kind.PROBE
    assert kinds[other.delivery.event_id] == Kind.EXPIRE
    (probe,) = [c for c in claimed if c.kind == Kind.PROBE]
    await settle(outbox, probe, DOWN, now=now + 401)
    # Tried once and still down: its retry span runs from that attempt, like any webhook's.
    # (The others' expire leases were never written down: they come back as expires too.)
    again = {
        a.delivery.event_id: a
        for a in await outbox.claim_destinations(home("acme", url), limit=100, now=now + 401 + 300)
    }
    assert again[event.id].kind == Kind.PROBE
    await settle(outbox, again[event.id], DOWN, now=now + 401 + 300)
    expired = await outbox.claim_destinations(home("acme", url), limit=100, now=now + 401 + 306)
    assert [(e.kind, e.delivery.event_id) for e in expired] == [(Kind.EXPIRE, event.id)]


async def test_a_listing_drops_forgotten_destinations_from_the_indexes_and_keeps_the_others(
    redis: aioredis.Redis, store: DestinationStore
) -> None:
    now = time.time()
    made = [destination_for("acme", f"https://forgotten{n}.example/hook") for n in range(3)]
    for dst in made:
        meta, *_ = dst.keys
        await redis.hset(meta, mapping={"tenant": "acme", "origin": dst.origin, "created_at": now, "failures": 0})
        await redis.sadd(keys.of(dst.id).destinations, dst.id)
        await redis.sadd(keys.of(dst.id).destinations_of("acme"), dst.id)
    forgotten = made[:2]
    for dst in forgotten:  # idle long enough: its record expired, its index entries stayed
        await redis.delete(dst.keys[0])

    assert [d.id for d in await store.all("acme")] == [made[2].id]
    assert [d.id for d in await store.all()] == [made[2].id]
    for dst in made:
        part = keys.of(dst.id)
        kept = dst not in forgotten
        assert await redis.sismember(part.destinations, dst.id) == kept
        assert await redis.sismember(part.destinations_of("acme"), dst.id) == kept
