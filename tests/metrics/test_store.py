"""MetricsStore against embedded SecantusDB: schema, idempotence, overflow and real outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from videochat.backends.embedded import SecantusProcess
from videochat.events import CallEvent
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import EVENTS, ROLLUPS, SAMPLES, MetricsStore, bucket_id

T0 = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
Db = Database[dict[str, Any]]


def sample(i: int, leg: str = "L1", *, room: str = "r1", at: datetime | None = None,
           participant: str = "alice") -> MetricSample:
    return MetricSample(
        at=at or T0 + timedelta(seconds=i), room=room, call_id="c1", participant=participant,
        leg=leg, direction="publish", kind="video", bitrate_in_kbps=500.0 + i,
        bitrate_out_kbps=20.0, rtt_ms=None if i % 2 else 30.0 + i % 7, loss_fraction=0.01,
        loss_cumulative=i, jitter_ms=2.5, fps=20.0, width=640, height=480, quality="high",
    )


def stored(db: Db, room: str = "r1") -> dict[tuple[str, datetime], dict[str, Any]]:
    """Every stored sample, keyed by (leg, time); asserts no slot holds two."""
    out: dict[tuple[str, datetime], dict[str, Any]] = {}
    for doc in db[SAMPLES].find({"meta.room": room}):
        at = doc["at"].astimezone(UTC)
        held = 0
        for slot, flag in enumerate(doc["p"]):
            if flag:
                held += 1
                key = (doc["meta"]["leg"], at + timedelta(seconds=slot))
                assert key not in out
                out[key] = {"bi": doc["bi"][slot], "lc": doc["lc"][slot], "q": doc["q"][slot]}
        assert held == doc["n"]
    return out


@pytest.fixture
def store(mongo_db: Db) -> Iterator[MetricsStore]:
    s = MetricsStore(mongo_db, flush_interval_s=0.1)
    yield s
    s.close(timeout=5)


def test_samples_land_in_minute_buckets_with_rollups(store: MetricsStore, mongo_db: Db) -> None:
    for i in range(90):  # 12:00:30 .. 12:01:59 -> two minutes
        store.record(sample(i))
        store.record(sample(i, "L2", participant="bob"))
    assert store.flush(20)
    assert mongo_db[SAMPLES].count_documents({}) == 4  # 2 legs x 2 minutes
    got = stored(mongo_db)
    assert len(got) == 180
    assert got[("L1", T0 + timedelta(seconds=5))] == {"bi": 505.0, "lc": 5, "q": "high"}
    doc = mongo_db[SAMPLES].find_one({"_id": bucket_id("r1", "L1", T0.replace(second=0))})
    assert doc is not None
    assert doc["meta"] == {"room": "r1", "call_id": "c1", "participant": "alice", "leg": "L1",
                           "direction": "publish", "kind": "video", "source": "server"}
    summary = mongo_db[ROLLUPS].find_one({"_id": doc["_id"]})
    assert summary is not None and summary["n"] == 30 and summary["meta"] == doc["meta"]
    assert summary["r10"]["n"] == [0, 0, 0, 10, 10, 10]
    assert summary["r10"]["bi"][3] == pytest.approx(sum(500.0 + i for i in range(10)) / 10)
    assert summary["r10"]["rttx"][3] == max(30.0 + i % 7 for i in range(0, 10, 2))
    assert summary["r10"]["rttx"][0] is None and summary["r10"]["bi"][0] is None
    assert summary["r20"]["n"] == [0, 10, 20] and summary["r30"]["n"] == [0, 30]
    assert summary["r30"]["bi"][1] == pytest.approx(sum(500.0 + i for i in range(30)) / 30)
    # RTT exists every other second only: the averages are over the samples that have one.
    assert summary["m"]["rtt"] == pytest.approx(
        sum(30.0 + i % 7 for i in range(0, 30, 2)) / 15)
    stats = store.stats()
    assert stats["written_samples"] == 180 and stats["buffered"] == 0
    assert stats["dropped_overflow"] == 0 and stats["backend_up"] is True


def test_events_and_indexes(store: MetricsStore, mongo_db: Db) -> None:
    for kind in ("participant_joined", "fault_started", "fault_ended"):
        store.emit(CallEvent(kind, "r1", participant="alice", call_id="c1", at=T0,
                             data={"x": 1}))
    assert store.flush(10)
    docs = list(mongo_db[EVENTS].find({"room": "r1"}).sort("_id", 1))
    assert [d["kind"] for d in docs] == ["participant_joined", "fault_started", "fault_ended"]
    assert docs[0]["data"] == {"x": 1} and docs[0]["participant"] == "alice"
    for coll in (SAMPLES, ROLLUPS, EVENTS):
        info = mongo_db[coll].index_information()
        assert info["ttl_at"]["expireAfterSeconds"] == 14 * 86_400
    assert any(v["key"] == [("meta.room", 1), ("at", 1)]
               for v in mongo_db[SAMPLES].index_information().values())


def test_retention_change_updates_ttl(mongo_db: Db) -> None:
    first = MetricsStore(mongo_db, retention_days=14, start=False)
    first.ensure_indexes()
    second = MetricsStore(mongo_db, retention_days=3, start=False)
    second.ensure_indexes()
    assert mongo_db[SAMPLES].index_information()["ttl_at"]["expireAfterSeconds"] == 3 * 86_400


def test_replay_after_restart_is_idempotent(mongo_db: Db) -> None:
    first = MetricsStore(mongo_db, flush_interval_s=0.1)
    for i in range(20):
        first.record(sample(i))
    assert first.close(10)
    # A new process (empty bucket cache) replays what it is unsure of, and goes on mid-minute.
    second = MetricsStore(mongo_db, flush_interval_s=0.1)
    for i in range(10, 40):
        second.record(sample(i))
    assert second.close(10)
    got = stored(mongo_db)
    assert len(got) == 40
    assert second.stats()["duplicates"] == 0
    # A different sample in an occupied second is refused and counted, never stored twice.
    third = MetricsStore(mongo_db, flush_interval_s=0.1)
    clash = MetricSample(at=T0 + timedelta(seconds=3), room="r1", call_id="c1",
                         participant="alice", leg="L1", direction="publish", kind="video",
                         bitrate_in_kbps=1.0)
    third.record(clash)
    assert third.close(10)
    assert third.stats()["duplicates"] == 1
    assert stored(mongo_db)[("L1", T0 + timedelta(seconds=3))]["bi"] == 503.0


def test_overflow_is_counted_not_silent(mongo_db: Db) -> None:
    s = MetricsStore(mongo_db, buffer_max=100, start=False)
    for i in range(150):
        s.record(sample(i % 60, leg=f"L{i}"))
    stats = s.stats()
    assert stats["buffered"] == 100 and stats["dropped_overflow"] == 50
    s.start()
    assert s.close(10)
    assert s.stats()["written"] == 100


def test_record_does_not_block_while_mongo_is_down(
    secantus_server: SecantusProcess, mongo_db: Db
) -> None:
    s = MetricsStore(mongo_db, flush_interval_s=0.1)
    secantus_server.stop()
    try:
        started = time.perf_counter()
        for i in range(2_000):
            s.record(sample(i % 60, leg=f"L{i // 60}"))
        spent = time.perf_counter() - started
        # Appending to the buffer: far below one blocking round trip to a dead server (3 s).
        assert spent < 1.0
        time.sleep(4.5)
        down = s.stats()
        assert down["backend_up"] is False and down["last_error"] and down["down_since"]
        assert down["buffered"] == 2_000
    finally:
        secantus_server.start()
    assert s.close(30)
    assert len(stored(mongo_db)) == 2_000
    assert s.stats()["down_since"] is None and s.stats()["last_written_at"] is not None


def _outage(secantus_server: SecantusProcess, db: Db, outage_s: float, legs: int,
            room: str) -> None:
    """Record `legs` legs at 1 Hz in real time, with MongoDB really down for `outage_s`."""
    s = MetricsStore(db, flush_interval_s=0.2)
    stop = threading.Event()
    recorded: list[MetricSample] = []
    start = datetime.now(UTC).replace(microsecond=0)

    def producer() -> None:
        i = 0
        while not stop.is_set():
            for leg in range(legs):
                smp = sample(i, f"L{leg}", room=room, at=start + timedelta(seconds=i))
                s.record(smp)
                recorded.append(smp)
            i += 1
            stop.wait(1.0)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        time.sleep(3)
        secantus_server.stop()
        down_at = time.monotonic()
        time.sleep(outage_s)
        assert s.stats()["backend_up"] is False
        during = s.stats()["buffered"]
        assert during >= (outage_s - 4) * legs  # samples really waited in the buffer
        secantus_server.start()
        down_for = time.monotonic() - down_at
        assert down_for >= outage_s
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
        if secantus_server.proc is None or secantus_server.proc.poll() is not None:
            secantus_server.start()
    assert s.close(60)
    stats = s.stats()
    assert stats["dropped_overflow"] == 0 and stats["duplicates"] == 0
    got = stored(db, room)
    # Every sample exactly once: the same keys, the same values.
    assert set(got) == {(m.leg, m.at) for m in recorded}
    assert len(got) == len(recorded)
    assert all(got[(m.leg, m.at)]["bi"] == m.bitrate_in_kbps for m in recorded)


@pytest.mark.slow
def test_outage_20s_every_sample_stored_once(
    secantus_server: SecantusProcess, mongo_db: Db
) -> None:
    _outage(secantus_server, mongo_db, 20.0, legs=4, room="outage20")


@pytest.mark.slow
def test_outage_60s_loses_no_sample(secantus_server: SecantusProcess, mongo_db: Db) -> None:
    _outage(secantus_server, mongo_db, 60.0, legs=10, room="outage60")


def test_close_without_backend_reports_leftovers(
    secantus_server: SecantusProcess, mongo_db: Db
) -> None:
    s = MetricsStore(mongo_db, flush_interval_s=0.1)
    secantus_server.stop()
    try:
        s.record(sample(1))
        assert s.flush(1.0) is False
        assert s.stats()["buffered"] == 1
    finally:
        secantus_server.start()
    assert s.close(20)
    assert len(stored(mongo_db)) == 1
