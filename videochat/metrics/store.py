"""Samples and call events in MongoDB, behind a bounded buffer that rides out outages.

Schema (the bucket pattern, by hand):

- ``samples``: one document per leg per minute, ``_id = "<room>|<leg>|<epoch minute>"``, with
  ``at`` (the minute), ``meta`` {room, call_id, participant, leg, direction, kind, source},
  ``n`` (samples held), ``last`` (newest sample time), ``p`` (which seconds hold a sample) and one
  60-slot array per metric indexed by the second (``bi bo rtt lf lc j fps w h q``). The source
  of truth. What a participant's page reports about the same leg (`metrics/browser.py`) is kept
  in the same layout as leg ``<leg>@browser`` with ``meta.source = "browser"`` and seven more
  arrays (``fc fz jb ca dm fd ao``: freezes, freeze time, jitter-buffer delay, concealed audio,
  decode time, dropped frames, uplink estimate).
- ``samples_10s``: beside each bucket, its small summary (same ``_id``, ``at``, ``meta``, ``n``,
  ``last``): ``r10``/``r20``/``r30`` (the minute's 10/20/30-s bins, arrays per metric, plus ``n``
  and ``rttx`` = max RTT) and ``m`` (the whole minute). One hour of one leg is 60 documents, so
  the dashboard's hour × 10 participants reads ~1,000 small documents and never the 72,000 raw
  points: SecantusDB evaluates aggregation expressions slowly (a `$map`/`$slice` downsampling
  over those documents took ~0.5 s, the same read of precomputed bins ~0.1 s), so the bins are
  computed once, by the writer, and minutes are `$group`ed by `$dateTrunc` for wider bins.
- ``events``: one document per `CallEvent` (``CallEvent.to_doc()``) with a ``_id`` fixed when the
  event is buffered.

Why not a time-series collection with one document per sample: SecantusDB (what tests and the
embedded mode run on) inserts ~8,000 documents/s and scans them slowly (measured on SecantusDB
0.7.0b3), far from the 20,000 samples/s and 500 ms dashboard targets; and time-series
collections enforce no unique ``_id``, so a retry after an ambiguous timeout would store a
sample twice. Instead the single
flusher thread keeps each open minute bucket in memory and writes the whole bucket with an
unordered batch: ``InsertOne`` the first time (an upsert costs ~6x more on SecantusDB), then
``ReplaceOne(upsert)``. That is idempotent (replaying it stores the same
document) and monotonic: the filter ``n < new n`` makes an older copy of a bucket unable to
overwrite a newer one (it fails with a duplicate-key error, which we count as already written).
A bucket we have not seen in this process is first read back, so a restart mid-minute keeps
what was already stored. Events go in with ``insert_many(ordered=False)``; duplicate keys on a
retry mean "already there".

`record()` and `emit()` only append to a bounded in-memory deque (never block the media loop).
The flusher takes batches from the head, in order, and drops them from the buffer only once
MongoDB acknowledged them; while MongoDB is down they wait and are retried with backoff. When the
buffer is full new items are refused and counted in `stats()["dropped_overflow"]`, and logged.
Retention: TTL indexes on ``at`` of both collections (``Settings.metrics_retention_days``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pymongo.errors
from pymongo import InsertOne, ReplaceOne
from pymongo.database import Database

from videochat.backends import keys
from videochat.clocks import WallClock, utcnow
from videochat.events import CallEvent
from videochat.metrics.stats import MetricSample
from videochat.settings import Settings

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]

SAMPLES = keys.SAMPLES
ROLLUPS = keys.ROLLUPS
EVENTS = keys.EVENTS
SLOTS = 60
ROLLUP_S = 10
ROLLUP_SLOTS = SLOTS // ROLLUP_S
# Short names keep the bucket documents small; diagnostics.FIELDS maps them back.
FIELDS: dict[str, str] = {
    "bitrate_in_kbps": "bi", "bitrate_out_kbps": "bo", "rtt_ms": "rtt", "loss_fraction": "lf",
    "loss_cumulative": "lc", "jitter_ms": "j", "fps": "fps", "width": "w", "height": "h",
    "quality": "q", "delivery": "d",
}
# Only browser samples (meta.source "browser", leg "<leg>@browser") carry these columns: a
# server bucket stays as small as before.
BROWSER_FIELDS: dict[str, str] = {
    "freeze_count": "fc", "freeze_s": "fz", "jitter_buffer_ms": "jb", "concealed_pct": "ca",
    "decode_ms": "dm", "frames_dropped": "fd", "available_out_kbps": "ao",
}
ALL_FIELDS: dict[str, str] = {**FIELDS, **BROWSER_FIELDS}
AVERAGED = ("bi", "bo", "rtt", "lf", "j", "fps", "jb", "ca", "dm", "ao")
MAXED = ("lc", "w", "h", "fc", "fz", "fd")  # cumulative counters and sizes: the bin's maximum


def fields_of(source: str | None) -> dict[str, str]:
    """The columns a bucket of that source holds (sample attribute -> short name)."""
    return ALL_FIELDS if source == "browser" else FIELDS


DUPLICATE_KEY = 11000


def bucket_id(room: str, leg: str, minute: datetime) -> str:
    return f"{room}|{leg}|{int(minute.timestamp()) // 60}"


def minute_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass
class _Bucket:
    id: str
    at: datetime
    meta: dict[str, Any]
    cols: dict[str, list[Any]] = field(default_factory=dict)
    present: list[int] = field(default_factory=lambda: [0] * SLOTS)
    n: int = 0
    last: datetime | None = None
    stored: bool = False  # some version of it is in MongoDB: replace, not insert

    def __post_init__(self) -> None:
        for f in self.fields.values():
            self.cols.setdefault(f, [None] * SLOTS)

    @property
    def fields(self) -> dict[str, str]:
        return fields_of(self.meta.get("source"))

    @classmethod
    def from_doc(cls, doc: MongoDoc) -> _Bucket:
        at = doc["at"] if doc["at"].tzinfo else doc["at"].replace(tzinfo=UTC)
        bucket = cls(id=doc["_id"], at=at, meta=dict(doc.get("meta") or {}))
        for f in bucket.fields.values():
            bucket.cols[f] = (list(doc.get(f) or []) + [None] * SLOTS)[:SLOTS]
        bucket.present = (list(doc.get("p") or []) + [0] * SLOTS)[:SLOTS]
        bucket.n = int(doc.get("n") or 0)
        bucket.last = doc.get("last")
        bucket.stored = True
        return bucket

    def add(self, sample: MetricSample) -> str:
        """'added', 'replay' (this very sample is already held) or 'duplicate' (slot taken)."""
        slot = int((sample.at - self.at).total_seconds())
        if self.present[slot]:
            same = all(self.cols[short][slot] == getattr(sample, name)
                       for name, short in self.fields.items())
            return "replay" if same else "duplicate"
        for name, short in self.fields.items():
            self.cols[short][slot] = getattr(sample, name)
        self.present[slot] = 1
        self.n += 1
        self.last = sample.at if self.last is None or sample.at > self.last else self.last
        return "added"

    def to_doc(self) -> MongoDoc:
        # Copies: the writer thread encodes this while the next batch changes the bucket.
        return {"_id": self.id, "at": self.at, "meta": dict(self.meta), "n": self.n,
                "last": self.last, "p": list(self.present),
                **{k: list(v) for k, v in self.cols.items()}}

    def to_rollup_doc(self) -> MongoDoc:
        return {"_id": self.id, "at": self.at, "meta": self.meta, "n": self.n,
                "last": self.last, **_rollups(self.cols, self.present)}


def _rollups(cols: dict[str, list[Any]], present: list[int]) -> MongoDoc:
    """The minute summarised per 10, 20 and 30 s (``r10 r20 r30``: arrays) and whole (``m``).

    Each 10-s bin keeps sums and counts, so wider bins are exact averages of the samples.
    """
    averaged = [f for f in AVERAGED if f in cols]
    maxed = [f for f in MAXED if f in cols]
    base: list[dict[str, Any]] = []
    for b in range(ROLLUP_SLOTS):
        lo, hi = b * ROLLUP_S, (b + 1) * ROLLUP_S
        cell: dict[str, Any] = {"n": sum(present[lo:hi])}
        for f in averaged:
            vals = [v for v in cols[f][lo:hi] if v is not None]
            cell[f] = (sum(vals), len(vals))
        for f in maxed:
            vals = [v for v in cols[f][lo:hi] if v is not None]
            cell[f] = max(vals) if vals else None
        rtts = [v for v in cols["rtt"][lo:hi] if v is not None]
        cell["rttx"] = max(rtts) if rtts else None
        for f in ("q", "d"):  # labels: the last one of the bin
            labels = [v for v in cols[f][lo:hi] if v is not None]
            cell[f] = labels[-1] if labels else None
        base.append(cell)

    def merge(cells: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": sum(c["n"] for c in cells)}
        for f in averaged:
            total = sum(c[f][0] for c in cells)
            count = sum(c[f][1] for c in cells)
            out[f] = total / count if count else None
        for f in (*maxed, "rttx"):
            vals = [c[f] for c in cells if c[f] is not None]
            out[f] = max(vals) if vals else None
        for f in ("q", "d"):
            labels = [c.get(f) for c in cells if c.get(f) is not None]
            out[f] = labels[-1] if labels else None
        return out

    doc: MongoDoc = {}
    for width in (10, 20, 30):
        step = width // ROLLUP_S
        merged = [merge(base[i:i + step]) for i in range(0, ROLLUP_SLOTS, step)]
        doc[f"r{width}"] = {k: [m[k] for m in merged] for k in merged[0]}
    doc["m"] = merge(base)
    return doc


@dataclass
class _Prepared:
    items: int  # buffer entries this covers, samples and events
    samples: int
    events: list[MongoDoc]
    raw: list[tuple[bool, MongoDoc]] = field(default_factory=list)  # (stored before?, doc)
    rollups: list[tuple[bool, MongoDoc]] = field(default_factory=list)


class MetricsStore:
    """Non-blocking sink for samples and events; a background thread writes them to MongoDB."""

    def __init__(
        self,
        db: Database[MongoDoc],
        *,
        clock: WallClock = utcnow,
        buffer_max: int = 200_000,
        batch_max: int = 20_000,
        flush_interval_s: float = 0.5,
        retention_days: int = 14,
        retry_max_s: float = 2.0,
        start: bool = True,
    ) -> None:
        self.db = db
        self._clock = clock
        self._buffer_max = buffer_max
        self._batch_max = batch_max
        self._interval = flush_interval_s
        self._retention_s = retention_days * 86_400
        self._retry_max = retry_max_s
        self._buf: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._enqueued = 0
        self._done = 0  # items taken off the buffer after MongoDB acknowledged them
        self._written_samples = 0
        self._written_events = 0
        self._duplicates = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._backend_up = True
        self._down_since: datetime | None = None
        self._last_written_at: datetime | None = None
        self._indexes_ready = False
        self._buckets: dict[str, _Bucket] = {}
        self._ids = itertools.count()
        self._instance = uuid.uuid4().hex[:12]
        self._last_overflow_log = 0.0
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    @classmethod
    def from_settings(cls, db: Database[MongoDoc], settings: Settings,
                      **kwargs: Any) -> MetricsStore:
        return cls(db, retention_days=settings.metrics_retention_days, **kwargs)

    # --- producers (any thread, never block) ---------------------------------------------

    def record(self, sample: MetricSample) -> None:
        self._append(("s", sample))

    def emit(self, event: CallEvent) -> None:
        doc = event.to_doc()
        doc["_id"] = f"{self._instance}-{next(self._ids)}"
        self._append(("e", doc))

    def _append(self, item: tuple[str, Any]) -> None:
        with self._cond:
            if len(self._buf) >= self._buffer_max:
                self._dropped += 1
                now = time.monotonic()
                if now - self._last_overflow_log > 10:
                    self._last_overflow_log = now
                    logger.warning("metrics buffer full (%d): %d items dropped so far",
                                   self._buffer_max, self._dropped)
                return
            self._buf.append(item)
            self._enqueued += 1
            if len(self._buf) >= self._batch_max:
                self._cond.notify_all()

    # --- control ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="metrics-flusher",
                                            daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is in MongoDB; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            self._cond.notify_all()
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (up to `timeout`), then stop the flusher. True when nothing was left behind."""
        flushed = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, timeout))
        return flushed

    def busy(self) -> bool:
        """True while MongoDB is down or the buffer is half full: optional data (browser
        reports) is shed then, so the server's own samples keep their room."""
        with self._cond:
            return not self._backend_up or len(self._buf) >= self._buffer_max // 2

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "buffered": len(self._buf), "written": self._done,
                "written_samples": self._written_samples, "written_events": self._written_events,
                "duplicates": self._duplicates, "dropped_overflow": self._dropped,
                "last_error": self._last_error, "backend_up": self._backend_up,
                "down_since": self._down_since, "last_written_at": self._last_written_at,
            }

    # --- the flusher thread ----------------------------------------------------------------

    def _run(self) -> None:
        # Two stages overlap: while the writer thread waits for MongoDB to store batch k,
        # this thread folds batch k+1 into the buckets (the Python half of the work).
        writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics-writer")
        inflight: tuple[concurrent.futures.Future[None], _Prepared] | None = None
        backoff = 0.1
        try:
            while True:
                with self._cond:
                    offset = inflight[1].items if inflight else 0
                    if inflight is None and not self._buf and not self._stopping:
                        self._cond.wait(self._interval)
                    if (self._stopping and inflight is None
                            and (not self._buf or not self._backend_up)):
                        return
                    batch = list(itertools.islice(self._buf, offset, offset + self._batch_max))
                prepared: _Prepared | None = None
                error: pymongo.errors.PyMongoError | None = None
                try:
                    if not self._indexes_ready:
                        self.ensure_indexes()
                    if batch:
                        prepared = self._prepare(batch)
                except pymongo.errors.PyMongoError as exc:
                    error = exc
                if inflight is not None:
                    future, sent = inflight
                    inflight = None
                    try:
                        future.result()
                        self._acknowledge(sent)
                    except pymongo.errors.PyMongoError as exc:
                        # Start again from the head of the buffer; what was folded in is
                        # replayed, and a replay rewrites the same documents.
                        error, prepared = exc, None
                if error is not None:
                    self._failed(error, backoff)
                    backoff = min(self._retry_max, backoff * 2)
                    continue
                backoff = 0.1
                if prepared is not None:
                    inflight = (writer.submit(self._send, prepared), prepared)
        finally:
            writer.shutdown(wait=True)

    def _acknowledge(self, sent: _Prepared) -> None:
        with self._cond:
            for _ in range(sent.items):
                self._buf.popleft()
            self._done += sent.items
            self._written_samples += sent.samples
            self._written_events += len(sent.events)
            if not self._backend_up:
                logger.info("MongoDB back; metrics buffer draining (%d left)", len(self._buf))
            self._backend_up = True
            self._down_since = None
            self._last_written_at = self._clock()
            self._cond.notify_all()
        self._evict()

    def _failed(self, exc: pymongo.errors.PyMongoError, backoff: float) -> None:
        with self._cond:
            if self._backend_up:
                logger.warning("MongoDB unreachable, buffering metrics: %s", exc)
                self._down_since = self._clock()
            self._backend_up = False
            self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._cond.wait(backoff)  # close() can wake us

    def ensure_indexes(self) -> None:
        samples, rollups, events = self.db[SAMPLES], self.db[ROLLUPS], self.db[EVENTS]
        for coll in (samples, rollups):
            coll.create_index([("meta.room", 1), ("at", 1)])
            coll.create_index([("meta.call_id", 1), ("at", 1)])
        events.create_index([("room", 1), ("at", 1)])
        events.create_index([("call_id", 1), ("at", 1)])
        for coll in (samples, rollups, events):
            try:
                coll.create_index("at", expireAfterSeconds=self._retention_s, name="ttl_at")
            except pymongo.errors.OperationFailure:
                # The retention setting changed: adjust the existing TTL index in place.
                self.db.command("collMod", coll.name, index={
                    "name": "ttl_at", "expireAfterSeconds": self._retention_s})
        self._indexes_ready = True

    def _prepare(self, batch: list[tuple[str, Any]]) -> _Prepared:
        """Fold a batch's samples into their minute buckets; the documents to write."""
        samples = [x for k, x in batch if k == "s"]
        events = [x for k, x in batch if k == "e"]
        prepared = _Prepared(items=len(batch), samples=len(samples), events=events)
        if not samples:
            return prepared
        keyed = [(f"{s.room}|{s.leg}|{int(s.at.timestamp()) // 60}", s) for s in samples]
        missing = list({bid for bid, _ in keyed if bid not in self._buckets})
        if missing:
            for doc in self.db[SAMPLES].find({"_id": {"$in": missing}}):
                self._buckets[doc["_id"]] = _Bucket.from_doc(doc)
        touched: dict[str, _Bucket] = {}
        duplicates = 0
        for bid, s in keyed:
            bucket = self._buckets.get(bid)
            if bucket is None:
                bucket = self._buckets[bid] = _Bucket(id=bid, at=minute_of(s.at), meta={
                    "room": s.room, "call_id": s.call_id, "participant": s.participant,
                    "leg": s.leg, "direction": s.direction, "kind": s.kind,
                    "source": s.source})
            # A replay (retry after a failed write) still rewrites its bucket: the failed
            # attempt may never have reached MongoDB.
            touched[bid] = bucket
            if bucket.add(s) == "duplicate":
                # A second sample for one leg in one second: kept out, and counted.
                duplicates += 1
        if duplicates:
            with self._cond:
                self._duplicates += duplicates
        for bucket in touched.values():
            prepared.raw.append((bucket.stored, bucket.to_doc()))
            prepared.rollups.append((bucket.stored, bucket.to_rollup_doc()))
            # From now on a write of this bucket replaces: if this one fails, the upsert of
            # the retry still creates it.
            bucket.stored = True
        return prepared

    def _send(self, prepared: _Prepared) -> None:
        # Raw buckets first: they are the source of truth a restarted process reads back.
        if prepared.raw:
            self._put(SAMPLES, prepared.raw)
            self._put(ROLLUPS, prepared.rollups)
        if prepared.events:
            try:
                self.db[EVENTS].insert_many(prepared.events, ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                _raise_unless_duplicates(exc)

    def _put(self, coll: str, entries: list[tuple[bool, MongoDoc]]) -> None:
        # A bucket new to MongoDB is inserted (on SecantusDB ~6x cheaper than an upsert);
        # one that exists, or turns out to (duplicate key), is replaced under the n guard.
        def replace(d: MongoDoc) -> ReplaceOne[MongoDoc]:
            return ReplaceOne({"_id": d["_id"], "n": {"$lt": d["n"]}}, d, upsert=True)

        docs = [d for _, d in entries]
        ops: list[InsertOne[MongoDoc] | ReplaceOne[MongoDoc]] = [
            replace(d) if stored else InsertOne(d) for stored, d in entries]
        try:
            self.db[coll].bulk_write(ops, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            _raise_unless_duplicates(exc)
            again = [replace(docs[e["index"]]) for e in exc.details.get("writeErrors", [])
                     if isinstance(ops[e["index"]], InsertOne)]
            if again:
                try:
                    self.db[coll].bulk_write(again, ordered=False)
                except pymongo.errors.BulkWriteError as exc2:
                    _raise_unless_duplicates(exc2)

    def _evict(self) -> None:
        # Open buckets stay in memory; closed minutes are dropped once safely stored.
        if len(self._buckets) < 64:
            return
        newest = max((b.at for b in self._buckets.values()), default=None)
        if newest is None:
            return
        horizon = newest - timedelta(minutes=2)
        for bid in [k for k, b in self._buckets.items() if b.at < horizon]:
            del self._buckets[bid]


def _raise_unless_duplicates(exc: pymongo.errors.BulkWriteError) -> None:
    errors: Iterable[dict[str, Any]] = exc.details.get("writeErrors", [])
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc


__all__ = ["ALL_FIELDS", "BROWSER_FIELDS", "EVENTS", "FIELDS", "ROLLUPS", "SAMPLES", "MetricsStore",
           "bucket_id", "fields_of", "minute_of"]
