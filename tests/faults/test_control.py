"""The fault control plane on real Valkey and SecantusDB: commands, acks, state, audit, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pymongo
import pytest
import redis

from tests.faults.test_injector import Call, loopback_ice  # noqa: F401 - fixture re-used
from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import redis_client
from videochat.events import CallEvent, EventBus
from videochat.exceptions import InvalidFaultCommand
from videochat.faults.control import (
    ACTIVE,
    STREAM,
    FaultConsumer,
    FaultControl,
    OutageController,
    start_fault_plane,
)
from videochat.faults.injector import FaultManager
from videochat.faults.model import parse_fault


class Node:
    """One app process: a FaultManager fed by a FaultConsumer thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: redis.Redis, name: str,
                 db: Any = None) -> None:
        self.events: list[CallEvent] = []
        bus = EventBus()
        bus.add_sink(self.events.append)
        self.manager = FaultManager(loop, bus, node=name)
        self.consumer = FaultConsumer(client, self.manager, db, node=name, block_ms=200)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def nodes(loop: asyncio.AbstractEventLoop, valkey_server: ValkeyProcess,
          redis_conn: redis.Redis, mongo_db: Any) -> Iterator[list[Node]]:
    made = [Node(loop, redis_client(valkey_server.url), f"node{i}", mongo_db) for i in range(2)]
    yield made
    for n in made:
        n.consumer.stop()


def test_command_travels_through_valkey_is_acked_listed_audited_and_reverts(
    nodes: list[Node], redis_conn: redis.Redis, mongo_db: Any
) -> None:
    node = nodes[0]
    node.consumer.start()
    control = FaultControl(redis_conn, mongo_db, by="test")
    wait_until(lambda: control.listeners() == ["node0"])
    fid = control.inject({"kind": "loss", "room": "r1", "participant": "alice", "percent": 20,
                          "duration_s": 1.5, "direction": "up"})
    wait_until(lambda: [a.fault.id for a in node.manager.active()] == [fid])
    [record] = control.active()
    assert record.fault.kind == "loss" and record.until - record.since == pytest.approx(1.5)
    wait_until(lambda: control.active()[0].applied_by == ["node0"])
    wait_until(lambda: node.kinds() == ["fault_started"])
    started = node.events[0]
    assert started.room == "r1" and started.participant == "alice"
    assert started.data["fault_id"] == fid and started.data["params"]["percent"] == 20
    # Reverts by itself at its end time, in the process and in Redis.
    wait_until(lambda: not node.manager.active(), 3)
    assert node.kinds() == ["fault_started", "fault_ended"]
    assert node.events[1].data["reason"] == "expired"
    assert control.active() == []
    assert redis_conn.hlen(ACTIVE) == 0
    wait_until(lambda: (mongo_db["faults"].find_one({"_id": fid}) or {}).get("status")
               == "expired", 5)
    doc = mongo_db["faults"].find_one({"_id": fid})
    assert doc["applied_by"] == ["node0"] and doc["requested_by"] == "test"
    assert doc["room"] == "r1" and doc["participant"] == "alice"


def test_every_process_applies_but_one_reports(nodes: list[Node], redis_conn: redis.Redis
                                               ) -> None:
    for n in nodes:
        n.consumer.start()
    control = FaultControl(redis_conn)
    wait_until(lambda: len(control.listeners()) == 2)
    fid = control.inject({"kind": "latency", "room": "r1", "ms": 100, "duration_s": 30})
    for n in nodes:
        wait_until(lambda n=n: bool(n.manager.active()))  # type: ignore[misc]
    record = control.active()[0]
    acks = control.wait_acks(record.cmd_id, 3)
    assert sorted(acks) == ["node0", "node1"] and all(a["ok"] for a in acks.values())
    wait_until(lambda: sum(len(n.events) for n in nodes) == 1)
    assert control.stop(fid) is True
    for n in nodes:
        wait_until(lambda n=n: not n.manager.active())  # type: ignore[misc]
    wait_until(lambda: sum(len(n.events) for n in nodes) == 2)
    reporter = next(n for n in nodes if n.events)
    assert reporter.kinds() == ["fault_started", "fault_ended"]
    assert reporter.events[1].data["reason"] == "stopped"
    assert control.stop(fid) is False


def test_clear_per_room_then_all(nodes: list[Node], redis_conn: redis.Redis) -> None:
    node = nodes[0]
    node.consumer.start()
    control = FaultControl(redis_conn)
    a = control.inject({"kind": "loss", "room": "r1", "percent": 5})
    b = control.inject({"kind": "black_video", "room": "r2", "participant": "bob"})
    c = control.inject({"kind": "bandwidth", "room": "r2", "kbps": 300})
    wait_until(lambda: len(node.manager.active()) == 3)
    assert node.manager.video_effect("r2", "bob") == "black"
    assert control.clear("r1") == [a]
    wait_until(lambda: {x.fault.id for x in node.manager.active()} == {b, c})
    assert sorted(control.clear()) == sorted([b, c])
    wait_until(lambda: not node.manager.active())
    assert node.manager.video_effect("r2", "bob") is None
    assert control.active() == []


def test_a_process_started_mid_fault_picks_it_up(nodes: list[Node], redis_conn: redis.Redis
                                                 ) -> None:
    control = FaultControl(redis_conn)
    fid = control.inject({"kind": "freeze_video", "room": "r1", "duration_s": 20})
    gone = control.inject({"kind": "loss", "room": "r1", "percent": 5, "duration_s": 0.2})
    time.sleep(0.3)
    node = nodes[1]
    node.consumer.start()
    wait_until(lambda: [x.fault.id for x in node.manager.active()] == [fid])
    assert node.manager.video_effect("r1", "anyone") == "freeze"
    assert gone not in {x.fault.id for x in control.active()}
    # It also still follows new commands after the catch-up.
    control.clear()
    wait_until(lambda: not node.manager.active())


def test_preset_expands_and_starts_together(nodes: list[Node], redis_conn: redis.Redis) -> None:
    node = nodes[0]
    node.consumer.start()
    control = FaultControl(redis_conn)
    faults = control.inject_preset("poor-3g", "r1", "alice", duration_s=10)
    assert sorted(f.kind for f in faults) == ["bandwidth", "latency", "loss"]
    wait_until(lambda: len(node.manager.active()) == 3)
    cmd_ids = {r.cmd_id for r in control.active()}
    assert len(cmd_ids) == 1
    assert {r.fault.preset for r in control.active()} == {"poor-3g"}


def test_malformed_commands_are_refused_with_clear_messages(
    nodes: list[Node], redis_conn: redis.Redis
) -> None:
    control = FaultControl(redis_conn)
    with pytest.raises(InvalidFaultCommand, match=r"percent.*less than or equal to 100"):
        control.inject({"kind": "loss", "room": "r1", "percent": 500})
    with pytest.raises(InvalidFaultCommand, match=r"'lose'.*must be one of loss"):
        control.inject({"kind": "lose", "room": "r1"})
    with pytest.raises(InvalidFaultCommand, match=r"'ms'.*not a parameter of loss"):
        control.inject({"kind": "loss", "room": "r1", "percent": 5, "ms": 20})
    with pytest.raises(InvalidFaultCommand, match="preset 'poor-5g'"):
        control.inject_preset("poor-5g", "r1", None)
    with pytest.raises(InvalidFaultCommand, match="OutageController"):
        control.inject({"kind": "redis_outage", "duration_s": 2})
    assert redis_conn.xlen(STREAM) == 0 and redis_conn.hlen(ACTIVE) == 0  # nothing was sent

    # Someone writes to the stream directly: the consumer refuses, says why, and goes on.
    node = nodes[0]
    node.consumer.sync()
    bad = [
        "not json",
        json.dumps({"op": "explode", "cmd_id": "c1"}),
        json.dumps({"op": "inject", "cmd_id": "c2", "faults": [{"kind": "loss", "room": "r"}]}),
        json.dumps({"op": "inject", "cmd_id": "c3", "faults": "x"}),
    ]
    for raw in bad:
        redis_conn.xadd(STREAM, {"cmd": raw})
    good = control.inject({"kind": "loss", "room": "r1", "percent": 5})
    assert node.consumer.poll_once(0) == 5
    assert [a.fault.id for a in node.manager.active()] == [good]
    assert len(node.consumer.errors) == 4
    assert "op 'explode' is invalid: must be inject, stop or clear" in node.consumer.errors[1]
    assert "'percent' is invalid: is required for kind loss" in node.consumer.errors[2]
    ack = control.acks("c2")["node0"]
    assert ack["ok"] is False and "percent" in ack["error"]


def test_end_to_end_loss_on_a_real_call_through_redis(
    valkey_server: ValkeyProcess, redis_conn: redis.Redis
) -> None:
    """A command from another client reaches the packets of a live loopback call, then ends."""

    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop(), node="media")
            manager.register_leg(call.leg("r1", "alice"))
            consumer = FaultConsumer(redis_client(valkey_server.url), manager, block_ms=200)
            consumer.start()
            try:
                control = FaultControl(redis_conn)
                await asyncio.to_thread(wait_until, lambda: control.listeners() == ["media"])
                control.inject({"kind": "loss", "room": "r1", "participant": "alice",
                                "percent": 100, "direction": "up", "duration_s": 2})
                await asyncio.sleep(0.8)
                frames = call.at_server.frames
                await asyncio.sleep(0.8)
                assert call.at_server.frames == frames  # nothing gets through
                assert call.at_browser.frames > 0
                await asyncio.sleep(1.5)  # the fault ends by itself
                assert not manager.active()
                await asyncio.to_thread(wait_until, lambda: call.at_server.frames > frames + 5)
            finally:
                await asyncio.to_thread(consumer.stop)

    asyncio.run(main())


# --- backend outages -----------------------------------------------------------------------

def _redis_up(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _mongo_up(url: str) -> bool:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=400, connectTimeoutMS=400, socketTimeoutMS=400)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def test_redis_outage_makes_embedded_valkey_unreachable_then_back(
    valkey_server: ValkeyProcess, redis_conn: redis.Redis
) -> None:
    outages = OutageController(redis_pid=valkey_server.pid)
    control = FaultControl(redis_conn, outages=outages)
    assert _redis_up(valkey_server.url)
    control.inject({"kind": "redis_outage", "duration_s": 2})
    t0 = time.monotonic()
    assert not _redis_up(valkey_server.url)
    wait_until(lambda: _redis_up(valkey_server.url), 5)
    assert 1.5 < time.monotonic() - t0 < 4.0  # back by itself, on time


def test_clear_ends_a_redis_outage_early(valkey_server: ValkeyProcess,
                                          redis_conn: redis.Redis) -> None:
    control = FaultControl(redis_conn, outages=OutageController(redis_pid=valkey_server.pid))
    control.inject({"kind": "redis_outage", "duration_s": 60})
    assert not _redis_up(valkey_server.url)
    t0 = time.monotonic()
    assert len(control.clear()) == 1
    assert _redis_up(valkey_server.url) and time.monotonic() - t0 < 2


def test_mongo_outage_makes_embedded_secantus_unreachable_then_back(
    secantus_server: SecantusProcess, redis_conn: redis.Redis, mongo_db: Any
) -> None:
    control = FaultControl(redis_conn, mongo_db,
                           outages=OutageController(mongo_pid=secantus_server.pid))
    assert _mongo_up(secantus_server.url)
    fid = control.inject({"kind": "mongo_outage", "duration_s": 2.5})
    t0 = time.monotonic()
    assert not _mongo_up(secantus_server.url)
    wait_until(lambda: _mongo_up(secantus_server.url), 6)
    assert 2.0 < time.monotonic() - t0 < 5.0
    assert mongo_db["faults"].find_one({"_id": fid})["kind"] == "mongo_outage"


def test_redis_outage_by_url_uses_client_pause(valkey_server: ValkeyProcess,
                                               redis_conn: redis.Redis) -> None:
    control = FaultControl(redis_conn, outages=OutageController(redis_client=redis_conn))
    control.inject({"kind": "redis_outage", "duration_s": 1.5})
    other = redis.Redis.from_url(valkey_server.url, socket_timeout=5)
    t0 = time.monotonic()
    other.set("vc:test:paused", "1")  # a write waits for the pause to end
    assert time.monotonic() - t0 > 1.0
    other.close()


def test_outages_that_cannot_be_produced_are_refused(redis_conn: redis.Redis) -> None:
    control = FaultControl(redis_conn, outages=OutageController())
    with pytest.raises(InvalidFaultCommand, match="MONGODB_URI"):
        control.inject({"kind": "mongo_outage", "duration_s": 5})
    with pytest.raises(InvalidFaultCommand, match="not the embedded valkey"):
        FaultControl(redis_conn, outages=OutageController(redis_pid=1)).inject(
            {"kind": "redis_outage", "duration_s": 5})
    assert redis_conn.hlen(ACTIVE) == 0


def test_outage_controller_reads_the_discovery_file(tmp_path: Any) -> None:
    (tmp_path / "servers.json").write_text(json.dumps(
        {"redis": {"pid": 11, "port": 1}, "mongo": {"pid": 22, "port": 2}}))
    both = OutageController.from_discovery(tmp_path, embedded_redis=True, embedded_mongo=True,
                                           redis_client=None)
    assert (both.redis_pid, both.mongo_pid) == (11, 22)
    urls = OutageController.from_discovery(tmp_path, embedded_redis=False,
                                           embedded_mongo=False, redis_client=None)
    assert (urls.redis_pid, urls.mongo_pid) == (None, None)


def test_parse_fault_round_trips_through_the_active_hash(redis_conn: redis.Redis) -> None:
    control = FaultControl(redis_conn)
    fault = parse_fault({"kind": "latency", "room": "r 1", "participant": "Zoë", "ms": 30,
                         "jitter_ms": 5, "direction": "down", "duration_s": 9})
    control.inject(fault)
    [record] = control.active()
    assert record.fault == fault


def test_start_fault_plane_wires_a_listening_process(
    loop: asyncio.AbstractEventLoop, redis_conn: redis.Redis, mongo_db: Any
) -> None:
    services = SimpleNamespace(redis=redis_conn, db=mongo_db)
    bus = EventBus()
    seen: list[CallEvent] = []
    bus.add_sink(seen.append)
    manager, consumer = start_fault_plane(services, loop, bus, node="app-a")
    try:
        control = FaultControl(redis_conn, mongo_db)
        wait_until(lambda: control.listeners() == ["app-a"])
        control.inject({"kind": "black_video", "room": "r9", "duration_s": 5})
        wait_until(lambda: manager.video_effect("r9", "x") == "black")
        wait_until(lambda: [e.kind for e in seen] == ["fault_started"])
    finally:
        consumer.stop()


def test_consumer_resyncs_when_the_stream_is_lost(nodes: list[Node], redis_conn: redis.Redis
                                                  ) -> None:
    """A Redis restarted without its data: the consumer starts over from the active set."""
    node = nodes[0]
    control = FaultControl(redis_conn)
    stale = control.inject({"kind": "loss", "room": "r1", "percent": 5})
    node.consumer.poll_once(0)
    for _ in range(3):
        control.inject({"kind": "kill", "room": "r0"})
    node.consumer.poll_once(0)
    assert stale in {a.fault.id for a in node.manager.active()}
    redis_conn.flushdb()  # what a restart without persistence looks like
    fresh = control.inject({"kind": "latency", "room": "r1", "ms": 50})
    node.consumer._recover()
    wait_until(lambda: {a.fault.id for a in node.manager.active()} == {fresh})


def test_consumer_outlives_a_redis_outage(nodes: list[Node], valkey_server: ValkeyProcess,
                                          redis_conn: redis.Redis) -> None:
    node = nodes[0]
    node.consumer.start()
    control = FaultControl(redis_conn, outages=OutageController(redis_pid=valkey_server.pid))
    wait_until(lambda: control.listeners() == ["node0"])
    control.inject({"kind": "redis_outage", "duration_s": 2.5})
    time.sleep(0.5)
    assert not _redis_up(valkey_server.url)
    wait_until(lambda: _redis_up(valkey_server.url))
    fid = control.inject({"kind": "loss", "room": "r1", "percent": 5})
    wait_until(lambda: fid in {a.fault.id for a in node.manager.active()}, 15)


def test_audit_keeps_applied_by_when_the_consumer_writes_first(
    nodes: list[Node], redis_conn: redis.Redis, mongo_db: Any
) -> None:
    fault = parse_fault({"kind": "loss", "room": "r1", "percent": 5})
    nodes[0].consumer._write_audit(fault.id, "applied", {"node": "node0", "at": 1.0})
    FaultControl(redis_conn, mongo_db, by="t")._audit_insert([fault], 2.0, "c1")
    doc = mongo_db["faults"].find_one({"_id": fault.id})
    assert doc["applied_by"] == ["node0"] and doc["status"] == "active"
    assert doc["requested_by"] == "t" and doc["since"] == 2.0
