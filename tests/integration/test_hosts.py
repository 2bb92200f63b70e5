"""Relay on several hosts: API and worker processes in network namespaces joined by a bridge, the Redis Cluster and
RabbitMQ reached over it; one host's link cut mid-flight and plugged back in loses nothing.

Hosts h1 and h2 each run an API and a worker, h3 a worker only. The cluster listens on the bridge's address in the
root namespace; RabbitMQ (which listens on the loopback only) is reached through a forwarder on the bridge's
address; the receiver listens there too. A client in the root namespace submits through both hosts' APIs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from delivery import keys, shares
from delivery.redis_client import connect_sync
from service.tasks.store import idempotency_digest
from tests.cluster import ClusterUnavailable, LocalCluster
from tests.conftest import CI
from tests.faults import TENANTS, Submitter, all_delivered, all_ended, by_tenant, cluster_env
from tests.hosts import Forwarder, Hosts, unavailable_reason
from tests.integration.conftest import rabbitmq_vhost
from tests.support import Api, Receiver, RelayProcess, relay_env, run_receiver, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq, pytest.mark.slow]

# How long a link stays cut: past the 5 s a connection attempt waits, the API's 2 s Redis command timeout, the 3 s
# webhook timeout and the 6 s a worker's heartbeat lasts (so its share of the partitions moves to the others).
CUT_S = 8.0
PARTITIONS = 16
# The scheduled tasks of the worker-only host's test come due this long after they are submitted (the link is cut
# right after); past the due time, another worker promotes them within its backstop pass (5 s) or once the cut
# host's heartbeat lapses (6 s), whichever comes first.
DELAY_S = 3.0
PROMOTE_WITHIN_S = DELAY_S + shares.BACKSTOP_S + 4.0
WORKER_ARGS = ("--processes", "1", "--threads", "8")


@dataclass
class Site:
    hosts: Hosts
    cluster: LocalCluster
    receiver: Receiver
    apis: dict[str, RelayProcess]
    workers: dict[str, RelayProcess]

    def api(self, host: str) -> Api:
        return Api(self.apis[host].url)

    def worker_members(self, api: Api) -> list[str]:
        """The workers alive, as the store says (``hostname:pid`` each)."""
        answer = api.get("/v1/ops/cluster", key="admin-token")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["workers"])

    def members_on(self, host: str, members: list[str]) -> list[str]:
        """Which of ``members`` run on ``host`` (by the process ids in its namespace)."""
        pids = self.hosts.pids(host)
        return [m for m in members if int(m.rpartition(":")[2]) in pids]


def _broker_url(amqp_url: str, forwarder: Forwarder) -> str:
    """``amqp_url`` (a vhost on the loopback RabbitMQ) reached through ``forwarder``."""
    parts = urlsplit(amqp_url)
    netloc = f"{parts.username}:{parts.password}@{forwarder.address}:{forwarder.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    with contextlib.ExitStack() as stack:
        hosts = stack.enter_context(Hosts(["h1", "h2", "h3"]))
        bridge = hosts.bridge_address
        shm = Path("/dev/shm")
        cluster = LocalCluster(host=bridge, base_dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
        stack.callback(cluster.stop)
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            if CI:
                raise
            pytest.skip(f"no Redis Cluster: {exc}")
        amqp_url = stack.enter_context(rabbitmq_vhost())
        broker = stack.enter_context(Forwarder((bridge, 0), ("127.0.0.1", 5672)))
        receiver = stack.enter_context(run_receiver(host=bridge))
        env = relay_env(
            cluster.url, **cluster_env(cluster, _broker_url(amqp_url, broker), RELAY_PARTITIONS=str(PARTITIONS))
        )
        apis = {
            name: RelayProcess("api", env, prefix=hosts[name].prefix, host=hosts[name].address) for name in ("h1", "h2")
        }
        workers = {name: RelayProcess("worker", env, *WORKER_ARGS, prefix=hosts[name].prefix) for name in hosts.names}
        started = [*apis.values(), *workers.values()]

        def stop_all() -> None:
            hosts.heal()  # a test that failed with a link cut: plugged back in, so that each process stops cleanly
            for process in started:
                process.signal_stop()
            for process in started:
                with contextlib.suppress(AssertionError):
                    process.stop()
                if request.session.testsfailed > failed_before:  # shown with the report of the last test
                    print(f"----- relay {process.role} output -----\n{process.output()[-3000:]}")
                process.log_path.unlink(missing_ok=True)

        failed_before = request.session.testsfailed
        stack.callback(stop_all)
        for process in started:
            process.start(wait=False)
        for process in started:
            process.wait_ready()
        site = Site(hosts=hosts, cluster=cluster, receiver=receiver, apis=apis, workers=workers)
        with contextlib.closing(site.api("h2")) as api:
            wait_until(lambda: len(site.worker_members(api)) == 3, timeout_s=20, message="three workers' heartbeats")
        yield site


def _merged(*submitters: Submitter) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for submitter in submitters:
        for tenant, ids in by_tenant(submitter.accepted).items():
            groups.setdefault(tenant, []).extend(ids)
    return groups


def test_a_host_cut_off_mid_flight_loses_no_accepted_task(site: Site) -> None:
    began = time.monotonic()
    hook = site.receiver.url("/hook")
    per_host = 100
    submitters = {name: Submitter(site.apis[name].url, hook, count=per_host) for name in ("h1", "h2")}
    api = site.api("h2")
    try:
        for submitter in submitters.values():
            submitter.start()
        wait_until(lambda: len(submitters["h1"].accepted) >= 25, timeout_s=30, message="25 tasks accepted on h1")
        before = site.members_on("h1", site.worker_members(api))
        assert len(before) == 1
        site.hosts.link_down("h1")
        cut_at = time.monotonic()
        accepted_at_cut = {name: len(s.accepted) for name, s in submitters.items()}
        # h1's worker misses its heartbeats: the others take its partitions over while it is away.
        wait_until(
            lambda: not site.members_on("h1", site.worker_members(api)),
            timeout_s=CUT_S,
            message="h1's worker to leave the live workers while h1 is cut off",
        )
        left_after_s = time.monotonic() - cut_at
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # the fault's length, not a wait for an event
        accepted_in_cut = {name: len(s.accepted) - accepted_at_cut[name] for name, s in submitters.items()}
        site.hosts.link_up("h1")
        wait_until(
            lambda: len(site.members_on("h1", site.worker_members(api))) == 1,
            timeout_s=20,
            message="h1's worker back among the live workers",
        )
        for submitter in submitters.values():
            submitter.join(timeout=60)
            assert not submitter.is_alive()
        for name, submitter in submitters.items():
            print(
                f"{name}: {len(submitter.accepted)} accepted, {submitter.retries} retries, gave up {submitter.gave_up}"
            )
            assert submitter.gave_up == 0
            assert len(submitter.accepted) == per_host
        accepted = [*submitters["h1"].accepted, *submitters["h2"].accepted]
        duplicated = len(accepted) - len(set(accepted))
        assert duplicated == 0  # a retried submission is the same task, never a second one
        print(
            f"h1 cut {CUT_S:g} s after {accepted_at_cut} accepted; its worker left the live set after "
            f"{left_after_s:.1f} s; accepted meanwhile {accepted_in_cut}"
        )
        assert accepted_in_cut["h2"] > 0  # the other host went on taking work

        counted = all_delivered(api, _merged(*submitters.values()), site.receiver, timeout_s=60)
        print(
            f"host cut off: accepted {counted.accepted}, completed {counted.completed}, lost {counted.lost}, "
            f"duplicated tasks {duplicated}, webhooks duplicated {counted.webhooks_duplicated}, "
            f"in {time.monotonic() - began:.1f} s"
        )
        counted.assert_every_task_completed_once(2 * per_host)
    finally:
        site.hosts.heal()
        api.close()


def test_a_worker_host_cut_off_has_its_partitions_taken_over(site: Site) -> None:
    """h3 runs a worker only. Cut off, its heartbeat lapses and the other workers take its partitions: the scheduled
    tasks of those partitions come due and are promoted while it is away; once back, it takes its share again."""
    began = time.monotonic()
    layout = keys.Layout.of(PARTITIONS)
    api, other = site.api("h1"), site.api("h2")
    store = connect_sync(site.cluster.url, cluster=True, command_timeout_s=2.0)
    try:
        members = site.worker_members(api)
        (h3_member,) = site.members_on("h3", members)
        h3_partitions = {p.index for p in layout.partitions if shares.owner(members, p) == h3_member}
        assert h3_partitions  # rendezvous hashing gave it a share
        hook = site.receiver.url("/hook")
        accepted: dict[str, list[str]] = {}  # those with a webhook, which run at once
        scheduled: list[tuple[str, str]] = []  # those that come due while h3 is away, all in h3's partitions
        keys_in_h3 = _keys_in(layout, h3_partitions)
        for n in range(60):
            tenant = TENANTS[n % len(TENANTS)]
            client = (api, other)[n % 2]
            if n % 2 == 0:
                # A task with a webhook lives in its destination's partition, which h3 may not hold for any tenant;
                # one with none but an Idempotency-Key lives in the key's: placed in h3's share, whatever it is.
                task = client.submit(
                    "echo",
                    {"n": n},
                    key=f"key-{tenant}",
                    body={"delay_s": DELAY_S},
                    headers={"Idempotency-Key": next(keys_in_h3[tenant])},
                )
                assert task["status"] == "scheduled"
                scheduled.append((tenant, task["id"]))
            else:
                task = client.submit("echo", {"n": n}, webhook=hook, key=f"key-{tenant}")
                accepted.setdefault(tenant, []).append(task["id"])
        site.hosts.link_down("h3")
        cut_at = time.monotonic()

        def waiting(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
            """Those of ``pairs`` still in their partition's scheduled set (not promoted yet)."""
            return [(t, i) for t, i in pairs if store.zscore(layout.for_id(i).scheduled_tasks, i) is not None]

        # Those of h3's partitions not due yet when it went away: only another worker can promote them now (their
        # status reads "scheduled" until a run starts, and RabbitMQ may hand their messages to h3, held until it is
        # back: the store's scheduled set says whether they were promoted).
        assert all(layout.for_id(i).index in h3_partitions for _, i in scheduled)
        in_h3_share = waiting(scheduled)
        print(f"h3 owns partitions {sorted(h3_partitions)}; {len(in_h3_share)} of {len(scheduled)} scheduled tasks")
        assert in_h3_share  # none came due before the cut
        wait_until(
            lambda: not waiting(in_h3_share),
            timeout_s=PROMOTE_WITHIN_S,
            message="h3's scheduled tasks promoted by the others while h3 is away",
        )
        promoted_after_s = time.monotonic() - cut_at
        assert site.hosts.pids("h3")  # still running, still cut off: someone else did its share
        wait_until(
            lambda: not site.members_on("h3", site.worker_members(api)),
            timeout_s=CUT_S,
            message="h3's worker to leave the live workers",
        )
        left_after_s = time.monotonic() - cut_at
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # the fault's length, not a wait for an event
        site.hosts.link_up("h3")
        wait_until(
            lambda: len(site.members_on("h3", site.worker_members(api))) == 1,
            timeout_s=20,
            message="h3's worker back among the live workers",
        )
        print(
            f"h3 cut {CUT_S:g} s: its scheduled tasks promoted after {promoted_after_s:.1f} s, left after {left_after_s:.1f} s"
        )
        counted = all_delivered(api, accepted, site.receiver, timeout_s=60)
        scheduled_by_tenant: dict[str, list[str]] = {}
        for tenant, task_id in scheduled:
            scheduled_by_tenant.setdefault(tenant, []).append(task_id)
        ran = all_ended(api, scheduled_by_tenant, timeout_s=60)
        print(
            f"worker host cut off: with a webhook accepted {counted.accepted}, completed {counted.completed}, lost "
            f"{counted.lost}, webhooks duplicated {counted.webhooks_duplicated}; scheduled in h3's share accepted "
            f"{ran.accepted}, completed {ran.completed}, lost {ran.lost}, ended twice {ran.not_ended_once}; in "
            f"{time.monotonic() - began:.1f} s"
        )
        counted.assert_every_task_completed_once(30)
        ran.assert_every_task_completed_once(30)
    finally:
        site.hosts.heal()
        api.close()
        other.close()
        store.close()


def _keys_in(layout: keys.Layout, partitions: set[int]) -> dict[str, Iterator[str]]:
    """Per tenant, Idempotency-Keys whose tasks (with no webhook) are placed in one of ``partitions``."""

    def keys_of(tenant: str) -> Iterator[str]:
        for n in itertools.count():
            candidate = f"h3-share-{n}"
            if layout.for_hash(tenant, idempotency_digest(candidate)).index in partitions:
                yield candidate

    return {tenant: keys_of(tenant) for tenant in TENANTS}
