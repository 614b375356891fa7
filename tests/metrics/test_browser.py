"""Browser getStats() reports (videochat/metrics/browser.py): validated, refused when forged,
rate limited and shed, and stored in MongoDB beside the server's samples (embedded SecantusDB)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fakes import EPOCH, FakeClock
from pymongo.database import Database

from videochat.metrics.browser import BrowserStats, is_browser_leg, server_leg
from videochat.metrics.diagnostics import iter_samples
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import BROWSER_FIELDS, SAMPLES, MetricsStore

Db = Database[dict[str, Any]]
ALICE = "aaaaaaaaaaaa"
BOB = "bbbbbbbbbbbb"


@dataclass
class Leg:
    leg_id: str
    room: str
    participant: str
    participant_id: str
    direction: str
    call_id: str | None = "c1"


LEGS = {
    "sub-aaaaaaaaaaaa-0-0": Leg(f"{ALICE}:sub0", "r1", "alice", ALICE + "ffff", "subscribe"),
    "pub-aaaaaaaaaaaa-0": Leg(f"{ALICE}:pub", "r1", "alice", ALICE + "ffff", "publish"),
    "sub-bbbbbbbbbbbb-0-0": Leg(f"{BOB}:sub0", "r1", "bob", BOB + "ffff", "subscribe"),
}


def resolve(key: str) -> Leg | None:
    return LEGS.get(key)


def report(key: str = "sub-aaaaaaaaaaaa-0-0", at: float = 1_000_000.0,
           **values: Any) -> dict[str, Any]:
    base = {"key": key, "at": at, "fps": 24.0, "width": 640, "height": 480,
            "bitrate_in_kbps": 800.0, "loss_fraction": 0.2, "jitter_ms": 12.0,
            "freeze_count": 3, "freeze_s": 1.25, "jitter_buffer_ms": 85.0,
            "concealed_pct": 4.5, "decode_ms": 2.1, "frames_dropped": 7, "rtt_ms": 3.0}
    return {**base, **values}


def batch(*samples: dict[str, Any], sent_at: float = 1_004_000.0) -> dict[str, Any]:
    return {"type": "stats", "token": "x", "sent_at": sent_at, "samples": list(samples)}


class Clocks:
    def __init__(self) -> None:
        self.mono = FakeClock(100.0)

    def wall(self) -> Any:
        return EPOCH + timedelta(seconds=self.mono.t)


@pytest.fixture
def got() -> list[MetricSample]:
    return []


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def ingest(got: list[MetricSample], clocks: Clocks) -> BrowserStats:
    return BrowserStats(got.append, clock=clocks.wall, monotonic=clocks.mono)


def test_a_good_batch_becomes_browser_samples_on_the_server_clock(
        ingest: BrowserStats, got: list[MetricSample], clocks: Clocks) -> None:
    reply = ingest.ingest(batch(report(at=1_000_000.0), report(at=1_001_000.0)),
                          owner=ALICE, resolve=resolve)
    assert reply.status == 200 and reply.body == {"stored": 2}
    first, second = got
    assert first.source == "browser" and first.leg == f"{ALICE}:sub0@browser"
    assert server_leg(first.leg) == f"{ALICE}:sub0" and is_browser_leg(first.leg)
    assert (first.participant, first.direction, first.room) == ("alice", "subscribe", "r1")
    # 4 s and 3 s before the page sent the batch, on the server's clock at receipt.
    received = clocks.wall().replace(microsecond=0)
    assert first.at == received - timedelta(seconds=4)
    assert second.at == received - timedelta(seconds=3)
    assert (first.freeze_count, first.freeze_s, first.jitter_buffer_ms) == (3, 1.25, 85.0)
    assert (first.concealed_pct, first.frames_dropped, first.width) == (4.5, 7, 640)


def test_missing_values_stay_missing(ingest: BrowserStats, got: list[MetricSample]) -> None:
    reply = ingest.ingest(batch({"key": "pub-aaaaaaaaaaaa-0", "at": 1_003_000.0, "fps": 20}),
                          owner=ALICE, resolve=resolve)
    assert reply.status == 200
    (s,) = got
    assert s.direction == "publish" and s.fps == 20.0
    assert s.freeze_count is None and s.jitter_buffer_ms is None and s.bitrate_in_kbps is None


@pytest.mark.parametrize(("sample", "named"), [
    (report(fps=-1), "samples[0].fps"),
    (report(loss_fraction=1.5), "samples[0].loss_fraction"),
    (report(freeze_count=2.5), "samples[0].freeze_count"),
    (report(jitter_buffer_ms="85"), "samples[0].jitter_buffer_ms"),
    (report(concealed_pct=float("nan")), "samples[0].concealed_pct"),
    (report(width=True), "samples[0].width"),
    (report(cpu_load=3), "cpu_load"),
    (report(key=7), "samples[0].key"),
    (report(at=900_000.0), "samples[0].at"),
    ({"key": "sub-aaaaaaaaaaaa-0-0"}, "samples[0].at"),
])
def test_bad_fields_are_refused_by_name(ingest: BrowserStats, got: list[MetricSample],
                                        sample: dict[str, Any], named: str) -> None:
    reply = ingest.ingest(batch(sample), owner=ALICE, resolve=resolve)
    assert reply.status == 400
    assert named in reply.body["error"]
    assert got == []


@pytest.mark.parametrize(("raw", "named"), [
    ([1, 2], "stats batch"),
    ({**batch(), "sent_at": "now"}, "sent_at"),
    ({**batch(), "samples": "all"}, "samples"),
    ({**batch(), "extra": 1}, "extra"),
    (batch(*[report(at=1_003_000.0)] * 65), "at most 64"),
])
def test_bad_batches_are_refused(ingest: BrowserStats, raw: Any, named: str) -> None:
    reply = ingest.ingest(raw, owner=ALICE, resolve=resolve)
    assert reply.status == 400 and named in reply.body["error"]


def test_a_forged_report_for_someone_elses_leg_is_refused(
        ingest: BrowserStats, got: list[MetricSample]) -> None:
    reply = ingest.ingest(batch(report(), report(key="sub-bbbbbbbbbbbb-0-0")),
                          owner=ALICE, resolve=resolve)
    assert reply.status == 403 and "sub-bbbbbbbbbbbb-0-0" in reply.body["error"]
    unknown = ingest.ingest(batch(report(key="sub-aaaaaaaaaaaa-5-0")), owner=ALICE,
                            resolve=resolve)
    assert unknown.status == 403 and "not a live leg" in unknown.body["error"]
    assert got == []  # nothing of a refused batch is kept


def test_a_leg_that_ended_meanwhile_costs_only_its_own_samples(
        ingest: BrowserStats, got: list[MetricSample]) -> None:
    # Alice's page reported her live leg and one the server had just replaced (rebuilt under
    # loss): the live leg's samples are kept.
    reply = ingest.ingest(batch(report(), report(key="sub-aaaaaaaaaaaa-5-0")), owner=ALICE,
                          resolve=resolve)
    assert reply.status == 200, reply.body
    assert reply.body == {"stored": 1, "ended_legs": ["sub-aaaaaaaaaaaa-5-0"]}
    assert len(got) == 1
    # An ended key that names someone else is still a forgery.
    forged = ingest.ingest(batch(report(), report(key="sub-cccccccccccc-5-0")), owner=ALICE,
                           resolve=resolve)
    assert forged.status == 403 and "not yours" in forged.body["error"]
    assert len(got) == 1


def test_rate_per_participant(ingest: BrowserStats, clocks: Clocks) -> None:
    statuses = [ingest.ingest(batch(report(at=1_003_000.0)), owner=ALICE,
                              resolve=resolve).status for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    limited = ingest.ingest(batch(report(at=1_003_000.0)), owner=ALICE, resolve=resolve)
    assert limited.retry_after_s == 2
    # Another participant has their own allowance; time refills alice's.
    bob = batch(report(key="sub-bbbbbbbbbbbb-0-0", at=1_003_000.0))
    assert ingest.ingest(bob, owner=BOB, resolve=resolve).status == 200
    clocks.mono.t += 4
    assert ingest.ingest(batch(report(at=1_003_000.0)), owner=ALICE,
                         resolve=resolve).status == 200


def test_shed_politely_when_busy(got: list[MetricSample], clocks: Clocks) -> None:
    busy = [True]
    ingest = BrowserStats(got.append, busy=lambda: busy[0], clock=clocks.wall,
                          monotonic=clocks.mono)
    reply = ingest.ingest(batch(report()), owner=ALICE, resolve=resolve)
    assert reply.status == 503 and reply.retry_after_s == 10 and got == []
    busy[0] = False
    assert ingest.ingest(batch(report()), owner=ALICE, resolve=resolve).status == 200


def test_a_page_that_stopped_reporting_has_no_browser_data(
        ingest: BrowserStats, clocks: Clocks) -> None:
    ingest.ingest(batch(report(at=1_003_000.0)), owner=ALICE, resolve=resolve)
    assert list(ingest.latest("r1")) == [f"{ALICE}:sub0@browser"]
    clocks.mono.t += 30
    assert ingest.latest("r1") == {}


def test_store_is_busy_when_its_buffer_is_half_full(mongo_db: Db) -> None:
    store = MetricsStore(mongo_db, buffer_max=4, start=False)
    sample = MetricSample(at=EPOCH, room="r", call_id=None, participant="p", leg="l",
                          direction="publish", kind="video")
    store.record(sample)
    assert not store.busy()
    store.record(sample)
    assert store.busy()


@pytest.fixture
def store(mongo_db: Db) -> Iterator[MetricsStore]:
    s = MetricsStore(mongo_db, flush_interval_s=0.1)
    yield s
    s.close(timeout=5)


def test_browser_samples_stored_beside_the_servers_in_the_same_layout(
        store: MetricsStore, mongo_db: Db, clocks: Clocks) -> None:
    ingest = BrowserStats(store.record, clock=clocks.wall, monotonic=clocks.mono)
    samples = [report(at=1_000_000.0 + 1000 * i, freeze_count=i) for i in range(4)]
    assert ingest.ingest(batch(*samples), owner=ALICE, resolve=resolve).status == 200
    server = MetricSample(at=clocks.wall().replace(microsecond=0) - timedelta(seconds=2),
                          room="r1", call_id="c1", participant="alice",
                          leg=f"{ALICE}:sub0", direction="subscribe", kind="video", fps=20.0)
    store.record(server)
    assert store.flush(10)
    docs = {d["meta"]["leg"]: d for d in mongo_db[SAMPLES].find({"meta.room": "r1"})}
    browser_doc = docs[f"{ALICE}:sub0@browser"]
    assert browser_doc["meta"]["source"] == "browser"
    assert all(short in browser_doc for short in BROWSER_FIELDS.values())
    # The server's bucket does not grow the browser's columns.
    assert docs[f"{ALICE}:sub0"]["meta"]["source"] == "server"
    assert not any(short in docs[f"{ALICE}:sub0"] for short in BROWSER_FIELDS.values())
    start = clocks.wall() - timedelta(minutes=2)
    back = [s for s in iter_samples(mongo_db, "r1", start, clocks.wall() + timedelta(minutes=1))
            if s.source == "browser"]
    assert [s.freeze_count for s in back] == [0, 1, 2, 3]
    assert {s.jitter_buffer_ms for s in back} == {85.0}
