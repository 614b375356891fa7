"""How the app process itself is doing: memory, threads, media-loop tasks, peer connections.

`ProcessHealth` samples the process every `interval_s` (10 s by default) and writes one document
per sample into the MongoDB collection ``process_health``::

    {_id: "<node>|<pid>|<ms>", at, node, pid, rss_bytes, cpu_percent, threads, thread_groups,
     fds, tasks, task_groups, loop_lag_ms, peer_connections, peer_connections_open,
     peer_connection_states, peer_connections_unregistered, peer_connections_stalled, legs,
     leg_directions, gc_ms, sample_ms}

It exists for the soak benchmark (bench/soak.py) and for operators: aiortc and streamlit-webrtc's
`MediaRelay` are known to keep peer connections, tasks and threads alive after a call, and the
only reliable way to see that is to count them inside the process after everyone has left.

Peer connections are counted through a weak set filled by a wrapper around
`RTCPeerConnection.__init__` (`videochat.compat.aiortc.track_peer_connections`), installed once
per process: scanning
`gc.get_objects()` instead costs a pause proportional to the heap on the media loop's GIL. A
closed connection that is merely unreachable garbage in a reference cycle stays in the weak set
until the cyclic collector runs, so when no media leg is live (a full collection pauses the
media loop for 0.1-0.6 s here) and connection objects remain, the sampler runs one full
`gc.collect()` at most every `collect_every_s` (timed, reported as ``gc_ms``) before counting.
During calls ``peer_connections`` may therefore include closed ones awaiting collection;
``peer_connections_open`` is exact.

Media-loop figures (tasks, open connections, loop lag) are read *on* the loop with
`call_soon_threadsafe`, since asyncio objects are not thread-safe; a loop that does not answer
within `loop_timeout_s` yields ``None`` for them and a lag of at least that timeout.

Writes follow the other writers of the package (`CallLog`, `MetricsStore`): documents wait in a
bounded deque and leave it only once MongoDB acknowledged them; failed writes are retried with
exponential backoff (a fixed ``_id`` makes a replay harmless); overflow is counted and logged.
Sampling never waits for MongoDB longer than one write attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
import pymongo.errors
from aiortc import RTCPeerConnection
from pymongo.database import Database

from videochat.backends import keys
from videochat.backends.worker import BackgroundWorker
from videochat.compat.aiortc import peer_connections_tracked, tracked_peer_connections
from videochat.media.legs import LegRegistry

logger = logging.getLogger(__name__)

COLLECTION = keys.PROCESS_HEALTH
DUPLICATE_KEY = 11000
TOP_GROUPS = 20
MongoDoc = dict[str, Any]

def live_peer_connections() -> list[RTCPeerConnection]:
    """Connections created since `track_peer_connections()` that are still referenced."""
    return [pc for pc, _ in tracked_peer_connections()]


def stalled_peer_connections(min_age_s: float,
                             now: float | None = None) -> list[RTCPeerConnection]:
    """Tracked connections older than `min_age_s` that never got connected ("new" or
    "connecting"). aioice reports an ICE failure only after end-of-candidates, which Chrome's
    gathered offers do not carry, so a connection whose browser went away before ICE
    completed stays "checking" for good unless someone closes it."""
    at = time.monotonic() if now is None else now
    return [pc for pc, created in tracked_peer_connections()
            if pc.connectionState in ("new", "connecting") and at - created >= min_age_s]


def group_name(name: str) -> str:
    """A name without its counters: 'ThreadPoolExecutor-3_1' -> 'ThreadPoolExecutor-#_#'."""
    return re.sub(r"\d+", "#", name)


def _top(counter: Counter[str]) -> dict[str, int]:
    return dict(counter.most_common(TOP_GROUPS))


def _task_label(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None)
    return str(name) if name else group_name(task.get_name())


@dataclass(frozen=True)
class LoopFigures:
    tasks: int
    task_groups: dict[str, int]
    peer_connections_open: int
    pc_states: dict[str, int]
    unregistered: int
    stalled: int
    lag_ms: float


@dataclass(frozen=True)
class HealthSnapshot:
    at: datetime
    node: str
    pid: int
    rss_bytes: int
    cpu_percent: float | None  # since the previous snapshot (None on the first one)
    threads: int
    thread_groups: dict[str, int]
    fds: int | None
    tasks: int | None  # None: no loop given, or it did not answer in time
    task_groups: dict[str, int]
    loop_lag_ms: float | None
    peer_connections: int | None  # alive objects; None when not tracked
    peer_connections_open: int | None  # of those, not in state "closed"
    # Open ones by "connection/ice/signalling" state; those no leg owns (an offer whose leg was
    # never registered, a worker nobody stopped) are the ones to chase after a call.
    peer_connection_states: dict[str, int]
    peer_connections_unregistered: int | None
    peer_connections_stalled: int | None  # never connected, older than `stalled_after_s`
    legs: int | None
    leg_directions: dict[str, int]
    gc_ms: float | None  # the full collection run before this snapshot, if one ran
    sample_ms: float

    def to_doc(self) -> MongoDoc:
        doc = asdict(self)
        doc["_id"] = f"{self.node}|{self.pid}|{int(self.at.timestamp() * 1000)}"
        return doc


class ProcessHealth(BackgroundWorker):
    """Samples this process; `start()` writes a document every `interval_s` to `db`."""

    def __init__(
        self,
        db: Database[MongoDoc] | None,
        *,
        node: str,
        loop: asyncio.AbstractEventLoop | None = None,
        legs: LegRegistry | None = None,
        interval_s: float = 10.0,
        collect_every_s: float | None = 30.0,
        loop_timeout_s: float = 2.0,
        stalled_after_s: float = 60.0,
        retention_days: int = 14,
        maxlen: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.db = db
        self.node = node
        self.loop = loop
        self.legs = legs
        self.collect_every_s = collect_every_s
        self.loop_timeout_s = loop_timeout_s
        self.stalled_after_s = stalled_after_s
        self.retention_s = retention_days * 86_400
        self.clock = clock
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # primes the counter: the next call covers the interval
        self._first = True
        self._last_gc = time.monotonic()
        self._pending: deque[MongoDoc] = deque()
        self._maxlen = maxlen
        self._indexed = False
        self._next_try = 0.0
        self._delay = 0.5
        super().__init__(thread_name="process-health", label="process health sample",
                         backend_errors=(), join_timeout_s=5.0, interval_s=interval_s,
                         error_pause_s=interval_s)
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last: HealthSnapshot | None = None

    # -- sampling ------------------------------------------------------------------------
    def snapshot(self, *, collect: bool | None = None) -> HealthSnapshot:
        """Measure now. `collect` forces (True) or skips (False) the full GC before counting
        peer connections; by default it runs only when idle (see `_collect_due`)."""
        t0 = time.perf_counter()
        gc_ms = self._maybe_collect(collect)
        with self._proc.oneshot():
            rss = self._proc.memory_info().rss
            cpu = self._proc.cpu_percent(None)
            try:
                fds: int | None = self._proc.num_fds()
            except (AttributeError, psutil.Error):
                fds = None
        threads = threading.enumerate()
        loop_figs = self._loop_figures()
        pcs = live_peer_connections() if peer_connections_tracked() else None
        legs = self.legs.legs() if self.legs is not None else None
        snap = HealthSnapshot(
            at=datetime.fromtimestamp(self.clock(), UTC),
            node=self.node,
            pid=os.getpid(),
            rss_bytes=rss,
            cpu_percent=None if self._first else cpu,
            threads=len(threads),
            thread_groups=_top(Counter(group_name(t.name) for t in threads)),
            fds=fds,
            tasks=loop_figs.tasks if loop_figs else None,
            task_groups=loop_figs.task_groups if loop_figs else {},
            loop_lag_ms=(loop_figs.lag_ms if loop_figs
                         else (self.loop_timeout_s * 1000 if self.loop is not None else None)),
            peer_connections=None if pcs is None else len(pcs),
            peer_connections_open=(loop_figs.peer_connections_open if loop_figs and pcs is not None
                                   else None),
            peer_connection_states=loop_figs.pc_states if loop_figs and pcs is not None else {},
            peer_connections_unregistered=(loop_figs.unregistered
                                           if loop_figs and pcs is not None else None),
            peer_connections_stalled=loop_figs.stalled if loop_figs and pcs is not None else None,
            legs=None if legs is None else len(legs),
            leg_directions=dict(Counter(leg.direction for leg in legs or [])),
            gc_ms=gc_ms,
            sample_ms=round((time.perf_counter() - t0) * 1000, 2),
        )
        self._first = False
        self.last = snap
        return snap

    def _maybe_collect(self, collect: bool | None) -> float | None:
        if collect is None:
            collect = self._collect_due()
        if not collect:
            return None
        t0 = time.perf_counter()
        gc.collect()
        self._last_gc = time.monotonic()
        return round((time.perf_counter() - t0) * 1000, 2)

    def _collect_due(self) -> bool:
        # Measured on the app: a full collection takes 125-570 ms on this 2-core box, all of it
        # holding the GIL the media loop needs, so it runs only when no leg is live (nobody's
        # media stalls) and some connection object is still around to be told apart from garbage.
        if self.collect_every_s is None or not peer_connections_tracked():
            return False
        if time.monotonic() - self._last_gc < self.collect_every_s:
            return False
        if self.legs is not None and self.legs.legs():
            return False
        return bool(live_peer_connections())

    def _loop_figures(self) -> LoopFigures | None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return None
        asked = time.perf_counter()
        result: concurrent.futures.Future[LoopFigures] = concurrent.futures.Future()

        def measure() -> None:
            try:
                tasks = asyncio.all_tasks(loop)
                open_pcs = [pc for pc in live_peer_connections()
                            if pc.connectionState != "closed"]
                known = self.legs.known if self.legs is not None else (lambda pc: True)
                result.set_result(LoopFigures(
                    tasks=len(tasks), task_groups=_top(Counter(_task_label(t) for t in tasks)),
                    peer_connections_open=len(open_pcs),
                    pc_states=_top(Counter(
                        f"{pc.connectionState}/{pc.iceConnectionState}/{pc.signalingState}"
                        + ("" if known(pc) else " unregistered") for pc in open_pcs)),
                    unregistered=sum(1 for pc in open_pcs if not known(pc)),
                    stalled=len(stalled_peer_connections(self.stalled_after_s)),
                    lag_ms=round((time.perf_counter() - asked) * 1000, 2)))
            except Exception as exc:  # noqa: BLE001 - reported to the waiting thread
                result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(measure)
            return result.result(timeout=self.loop_timeout_s)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("media loop did not answer the health probe within %.1f s",
                           self.loop_timeout_s)
            return None

    # -- writing -------------------------------------------------------------------------
    def record(self, snap: HealthSnapshot) -> None:
        if len(self._pending) >= self._maxlen:
            self._pending.popleft()  # the oldest goes: recent health matters most
            self.dropped += 1
            if self.dropped in (1, 10) or self.dropped % 100 == 0:
                logger.error("process health buffer full: %d documents dropped", self.dropped)
        self._pending.append(snap.to_doc())

    def flush(self) -> int:
        """Write what is pending (one attempt); returns how many documents MongoDB now holds
        from this batch. Failures leave the documents pending and set the backoff."""
        if self.db is None or not self._pending:
            return 0
        coll = self.db[COLLECTION]
        batch = list(self._pending)
        try:
            if not self._indexed:
                coll.create_index([("node", 1), ("pid", 1), ("at", 1)])
                coll.create_index("at", expireAfterSeconds=self.retention_s, name="ttl_at")
                self._indexed = True
            try:
                coll.insert_many(batch, ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                # Duplicates: an earlier attempt was stored although its answer was lost.
        except pymongo.errors.PyMongoError as exc:
            self.last_error = str(exc).split(",")[0]
            self._next_try = time.monotonic() + self._delay
            logger.warning("process health write failed, retrying in %.1f s: %s", self._delay,
                           self.last_error)
            self._delay = min(self._delay * 2, 30.0)
            return 0
        for _ in batch:
            self._pending.popleft()
        self.written += len(batch)
        self._delay, self.last_error = 0.5, None
        return len(batch)

    def tick(self) -> HealthSnapshot:
        """One sampling round: measure, queue, and write unless backing off."""
        snap = self.snapshot()
        self.record(snap)
        if time.monotonic() >= self._next_try:
            self.flush()
        return snap

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "pending": len(self._pending),
                "last_error": self.last_error}

    # -- lifecycle -----------------------------------------------------------------------
    def run_round(self) -> None:
        self.tick()

    def stop(self, timeout: float = 5.0) -> None:
        self.join_timeout_s = timeout
        super().stop()
        with_db = self.db is not None
        if with_db and self._pending:
            self.flush()


@dataclass
class HealthSeries:
    """Process health documents of one process, oldest first (what the soak bench reads)."""

    docs: list[MongoDoc] = field(default_factory=list)

    @classmethod
    def read(cls, db: Database[MongoDoc], *, node: str | None = None, pid: int | None = None,
             since: datetime | None = None) -> HealthSeries:
        query: MongoDoc = {}
        if node is not None:
            query["node"] = node
        if pid is not None:
            query["pid"] = pid
        if since is not None:
            query["at"] = {"$gte": since}
        return cls(list(db[COLLECTION].find(query).sort("at", 1)))

    def last(self) -> MongoDoc | None:
        return self.docs[-1] if self.docs else None
