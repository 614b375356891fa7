"""The fault control plane: commands through Redis, applied by every app process hosting media.

Redis layout (all keys under ``vc:faults:``):

* stream ``vc:faults:commands`` — one entry per command, field ``cmd`` = JSON
  ``{"op": "inject", "cmd_id", "faults": [...], "since", "until"}``, ``{"op": "stop",
  "cmd_id", "fault_id"}`` or ``{"op": "clear", "cmd_id", "room"}``. Every process reads every
  entry with a plain XREAD from its own last id: each one must apply each fault to its own legs.
* hash ``vc:faults:active`` — fault id → JSON ``{fault, since, until, cmd_id, by}``: the applied
  state, written by the publisher in the same transaction as the command, so ``faults list``
  works from any process and a process that starts mid-fault picks it up. Expired entries are
  pruned by whoever reads them.
* hash ``vc:faults:ack:{cmd_id}`` — node → JSON ``{ok, error, at, legs}``: per-process
  acknowledgement (or refusal, with the reason) of a command; expires a while after the fault.
* ``vc:faults:claim:{fault_id}`` — SET NX by the first process to apply a fault: that process
  reports its `fault_started` / `fault_ended` events and its audit updates, so charts show each
  fault once however many processes there are.
* hash ``vc:faults:nodes`` — node → last heartbeat, to tell whether any app process listens.

Audit log: MongoDB collection ``faults``, one document per fault (``_id`` = fault id) with the
fault, who asked, since/until, which processes applied it, and how and when it ended.

Backend outages (``redis_outage``, ``mongo_outage``) are executed by the publisher itself, not by
the consumers, because the control plane may be the very thing that goes down; see
`OutageController` for how each backend is made unavailable and brought back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil
import pymongo.errors
import redis
from pymongo import UpdateOne
from pymongo.database import Database

from videochat.backends import keys
from videochat.backends.command_stream import CommandStreamConsumer, stream_id
from videochat.backends.services import Services
from videochat.clocks import EpochClock
from videochat.events import EventSink
from videochat.exceptions import BackendUnavailable, InvalidFaultCommand
from videochat.faults.injector import FaultManager
from videochat.faults.kinds import BACKEND_KINDS
from videochat.faults.model import Fault, expand_preset, fault_to_dict, parse_fault

logger = logging.getLogger(__name__)

STREAM = keys.FAULT_COMMANDS
ACTIVE = keys.FAULTS_ACTIVE
NODES = keys.FAULT_NODES
STREAM_MAXLEN = 10_000
ACK_GRACE_S = 600
NODE_ALIVE_S = 5.0
RECONCILE_S = 30.0  # a safety net: the stream alone keeps processes in step

Doc = dict[str, Any]


ack_key = keys.fault_ack_key
claim_key = keys.fault_claim_key


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class ActiveRecord:
    """One active fault as every process sees it in Redis."""

    fault: Fault
    since: float
    until: float
    cmd_id: str
    by: str
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    @property
    def applied_by(self) -> list[str]:
        return sorted(n for n, a in self.acks.items() if a.get("ok"))


# --- backend outages -------------------------------------------------------------------------

class OutageController:
    """Makes Redis or MongoDB really unavailable for N seconds, and brings it back.

    * Embedded servers (no URL in settings): SIGSTOP the server process found in the discovery
      file; clients see timeouts exactly as with a hung server. SIGCONT is sent by a small
      detached ``sh -c 'sleep N; kill -CONT pid'`` so the server comes back even if the
      process that stopped it dies meanwhile; `resume` sends it at once.
    * Redis given by URL: ``CLIENT PAUSE <ms> ALL`` — the server resumes by itself.
    * MongoDB given by URL: refused; this tool will not stop someone else's database.
    """

    def __init__(
        self,
        *,
        redis_pid: int | None = None,
        mongo_pid: int | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.redis_pid = redis_pid
        self.mongo_pid = mongo_pid
        self.redis_client = redis_client
        self._guards: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_discovery(cls, state_dir: Path, *, embedded_redis: bool, embedded_mongo: bool,
                       redis_client: redis.Redis | None) -> OutageController:
        """Pids from the embedded servers' discovery file (`<state>/servers.json`)."""
        try:
            known = json.loads((Path(state_dir) / "servers.json").read_text())
        except (OSError, ValueError):
            known = {}

        def pid(name: str) -> int | None:
            value = known.get(name, {}).get("pid") if isinstance(known, dict) else None
            return value if isinstance(value, int) else None

        return cls(
            redis_pid=pid("redis") if embedded_redis else None,
            mongo_pid=pid("mongo") if embedded_mongo else None,
            redis_client=None if embedded_redis else redis_client,
        )

    def check(self, fault: Fault) -> None:
        """Raise `InvalidFaultCommand` when this backend outage cannot be produced here."""
        if fault.kind == "redis_outage":
            if self.redis_pid is None and self.redis_client is None:
                raise InvalidFaultCommand("fault kind", fault.kind,
                                          "no Redis to pause: embedded server not found")
            if self.redis_pid is not None:
                self._check_pid(self.redis_pid, "valkey", fault.kind)
        elif fault.kind == "mongo_outage":
            if self.mongo_pid is None:
                raise InvalidFaultCommand(
                    "fault kind", fault.kind,
                    "needs the embedded SecantusDB; with MONGODB_URI set this tool will not "
                    "stop an external MongoDB (stop it yourself, or unset MONGODB_URI)")
            self._check_pid(self.mongo_pid, "secantus", fault.kind)

    @staticmethod
    def _check_pid(pid: int, expect: str, kind: str) -> None:
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except (psutil.Error, OSError):
            raise InvalidFaultCommand("fault kind", kind,
                                      f"the embedded server (pid {pid}) is not running") from None
        if expect not in cmdline:
            raise InvalidFaultCommand("fault kind", kind,
                                      f"pid {pid} is not the embedded {expect} server")

    def start(self, fault: Fault) -> None:
        self.check(fault)
        seconds = fault.duration_s
        pid = self.redis_pid if fault.kind == "redis_outage" else self.mongo_pid
        if pid is not None:
            # The guard first: if it cannot be started, the server is never stopped.
            self._stop_guard(fault.kind)
            self._guards[fault.kind] = subprocess.Popen(
                ["/bin/sh", "-c", f"sleep {seconds:.3f}; kill -CONT {pid}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            os.kill(pid, signal.SIGSTOP)
            logger.warning("%s: stopped pid %d for %.1f s", fault.kind, pid, seconds)
        elif self.redis_client is not None:
            self.redis_client.client_pause(int(seconds * 1000), all=True)
            logger.warning("%s: CLIENT PAUSE %.1f s", fault.kind, seconds)

    def _stop_guard(self, kind: str) -> None:
        guard = self._guards.pop(kind, None)
        if guard is not None and guard.poll() is None:
            # Its own session: the group is just that shell and its sleep.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(guard.pid, signal.SIGKILL)
            guard.wait(2)

    def resume(self, kinds: Iterable[str] = BACKEND_KINDS) -> None:
        """End outages now (harmless when none is running)."""
        kinds = set(kinds)
        for kind, pid in (("redis_outage", self.redis_pid), ("mongo_outage", self.mongo_pid)):
            if kind in kinds and pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                self._stop_guard(kind)
        if "redis_outage" in kinds and self.redis_client is not None:
            with contextlib.suppress(redis.RedisError):
                self.redis_client.client_unpause()


# --- publisher ---------------------------------------------------------------------------------

class FaultControl:
    """The side that asks for faults: the command line, the /faults page, the QA runner."""

    def __init__(
        self,
        client: redis.Redis,
        db: Database[Doc] | None = None,
        *,
        outages: OutageController | None = None,
        by: str = "cli",
        clock: EpochClock = time.time,
    ) -> None:
        self.redis = client
        self.db = db
        self.outages = outages
        self.by = by
        self.clock = clock
        self.last_cmd_id: str | None = None  # of the last inject, to wait for its acks

    # commands

    def inject(self, command: Mapping[str, Any] | Fault) -> str:
        """Validate and send one fault; returns its id. The QA runner's entry point."""
        fault = command if not isinstance(command, Mapping) else parse_fault(dict(command))
        return self.inject_many([fault])[0].id

    def inject_preset(self, name: str, room: str, participant: str | None,
                      duration_s: float | None = None) -> list[Fault]:
        return self.inject_many(expand_preset(name, room, participant, duration_s))

    def inject_many(self, faults: list[Fault]) -> list[Fault]:
        """Send faults in one command (a preset's parts start together). Returns them."""
        if not faults:
            raise InvalidFaultCommand("faults", [], "at least one fault is needed")
        backend = [f for f in faults if f.kind in BACKEND_KINDS]
        for f in backend:
            if self.outages is None:
                raise InvalidFaultCommand("fault kind", f.kind,
                                          "backend outages need an OutageController "
                                          "(use FaultControl.from_services)")
            self.outages.check(f)
        now = self.clock()
        cmd_id = _new_id()
        command = {"op": "inject", "cmd_id": cmd_id, "by": self.by,
                   "faults": [fault_to_dict(f) for f in faults], "since": now}
        pipe = self.redis.pipeline(transaction=True)
        for f in faults:
            record = {"fault": fault_to_dict(f), "since": now, "until": now + f.duration_s,
                      "cmd_id": cmd_id, "by": self.by}
            pipe.hset(ACTIVE, f.id, json.dumps(record))
        pipe.xadd(STREAM, {"cmd": json.dumps(command)}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()
        self.last_cmd_id = cmd_id
        self._audit_insert(faults, now, cmd_id)
        for f in backend:
            assert self.outages is not None
            self.outages.start(f)
        logger.info("fault command %s sent by %s: %s", cmd_id, self.by,
                    "; ".join(f.describe() for f in faults))
        return faults

    def stop(self, fault_id: str) -> bool:
        """End one fault now. False when it was not active."""
        raw = self.redis.hget(ACTIVE, fault_id)
        if raw is None:
            return False
        record = self._decode(fault_id, str(raw))
        if record is not None and record.fault.kind in BACKEND_KINDS and self.outages:
            self.outages.resume([record.fault.kind])
        self._send({"op": "stop", "fault_id": fault_id}, remove=[fault_id])
        self._audit_end([fault_id], "stopped")
        return True

    def clear(self, room: str | None = None) -> list[str]:
        """End every fault (room None) or every fault aimed at `room`. Returns their ids."""
        if room is None and self.outages is not None:
            self.outages.resume()  # first: Redis itself may be the one paused
        active = self.active(prune=False)
        ids = [a.fault.id for a in active if room is None or a.fault.room == room]
        if room is not None and self.outages is not None:
            kinds = {a.fault.kind for a in active if a.fault.id in ids}
            self.outages.resume(kinds & BACKEND_KINDS)
        self._send({"op": "clear", "room": room}, remove=ids, clear_all=room is None)
        self._audit_end(ids, "cleared")
        return ids

    def _send(self, command: dict[str, Any], remove: list[str], clear_all: bool = False) -> str:
        command = {"cmd_id": _new_id(), "by": self.by, **command}
        pipe = self.redis.pipeline(transaction=True)
        if clear_all:
            pipe.delete(ACTIVE)
        elif remove:
            pipe.hdel(ACTIVE, *remove)
        pipe.xadd(STREAM, {"cmd": json.dumps(command)}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()
        return str(command["cmd_id"])

    # state

    def active(self, *, prune: bool = True, with_acks: bool = True) -> list[ActiveRecord]:
        """Faults in force now, oldest first; ended ones are dropped from Redis on the way."""
        raw: dict[str, str] = self.redis.hgetall(ACTIVE)  # type: ignore[assignment]
        now = self.clock()
        out, expired = [], []
        for fid, value in raw.items():
            record = self._decode(fid, value)
            if record is None or record.until <= now:
                expired.append(fid)
                continue
            out.append(record)
        if expired and prune:
            self.redis.hdel(ACTIVE, *expired)
        if with_acks:
            out = [ActiveRecord(r.fault, r.since, r.until, r.cmd_id, r.by, self.acks(r.cmd_id))
                   for r in out]
        return sorted(out, key=lambda r: (r.since, r.fault.id))

    def acks(self, cmd_id: str) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = self.redis.hgetall(ack_key(cmd_id))  # type: ignore[assignment]
        out = {}
        for node, value in raw.items():
            with contextlib.suppress(ValueError):
                out[node] = json.loads(value)
        return out

    def wait_acks(self, cmd_id: str, timeout_s: float, expect: int | None = None
                  ) -> dict[str, dict[str, Any]]:
        """Acks of a command, waiting up to `timeout_s` for `expect` (default: live nodes)."""
        want = len(self.listeners()) if expect is None else expect
        deadline = time.monotonic() + timeout_s
        acks = self.acks(cmd_id)
        while len(acks) < max(want, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
            acks = self.acks(cmd_id)
        return acks

    def listeners(self) -> list[str]:
        """App processes whose consumer beat within the last few seconds."""
        raw: dict[str, str] = self.redis.hgetall(NODES)  # type: ignore[assignment]
        now = self.clock()
        return sorted(n for n, t in raw.items() if now - float(t) < NODE_ALIVE_S)

    @staticmethod
    def _decode(fid: str, value: str) -> ActiveRecord | None:
        try:
            d = json.loads(value)
            return ActiveRecord(parse_fault(d["fault"]), float(d["since"]), float(d["until"]),
                                str(d.get("cmd_id", "")), str(d.get("by", "")))
        except (ValueError, KeyError, TypeError, InvalidFaultCommand):
            logger.warning("dropping unreadable active fault %s", fid)
            return None

    # audit

    def _audit_insert(self, faults: list[Fault], now: float, cmd_id: str) -> None:
        if self.db is None:
            return
        # Upserts: a fast consumer may record "applied by" before this lands.
        ops = [UpdateOne({"_id": f.id}, {
            "$set": {"fault": fault_to_dict(f), "kind": f.kind, "room": f.room,
                     "participant": f.participant, "requested_by": self.by, "cmd_id": cmd_id,
                     "since": now, "until": now + f.duration_s, "status": "active"},
            "$setOnInsert": {"applied_by": []},
        }, upsert=True) for f in faults]
        try:
            self.db[keys.FAULTS].bulk_write(ops, ordered=False)
        except pymongo.errors.PyMongoError as exc:
            logger.warning("fault audit insert failed (%s); the faults still run", exc)

    def _audit_end(self, ids: list[str], status: str) -> None:
        if self.db is None or not ids:
            return
        try:
            self.db[keys.FAULTS].update_many(
                {"_id": {"$in": ids}, "status": "active"},
                {"$set": {"status": status, "ended_at": self.clock(), "ended_by": self.by}})
        except pymongo.errors.PyMongoError as exc:
            logger.warning("fault audit update failed: %s", exc)


# --- consumer ----------------------------------------------------------------------------------

class FaultConsumer(CommandStreamConsumer):
    """Feeds this process's `FaultManager` from the command stream; one per app process.

    `start()` runs it in a daemon thread; `poll_once()` does one round (tests, or a caller that
    owns its own loop). Redis errors are logged and retried: faults already applied keep running
    and end on their own timers, since their end time travelled with them.
    """

    def __init__(
        self,
        client: redis.Redis,
        manager: FaultManager,
        db: Database[Doc] | None = None,
        *,
        node: str | None = None,
        clock: EpochClock = time.time,
        block_ms: int = 1000,
    ) -> None:
        super().__init__(client, stream=STREAM, node=node or manager.node, label="fault consumer",
                         thread_name="fault-consumer", block_ms=block_ms, batch=100)
        self.manager = manager
        self.db = db
        self.clock = clock
        self.errors: list[str] = []  # refused commands, newest last (bounded)
        self._reconciled_at = time.monotonic()
        self._recovering = False
        self._claimed: dict[str, float] = {}  # fault id -> until, for the audit's end
        self._audit: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue(maxsize=1000)

    # lifecycle

    def start(self) -> Self:
        if not self.running:
            super().start()
            if self.db is not None:
                threading.Thread(target=self._audit_worker, name="fault-audit",
                                 daemon=True).start()
        return self

    def run_round(self) -> None:
        if self.last_id is None:
            self.sync()
        elif self._recovering or time.monotonic() - self._reconciled_at > RECONCILE_S:
            self._recover()
        self._recovering = False
        self.poll_once()

    def on_backend_error(self, exc: BaseException) -> None:
        super().on_backend_error(exc)
        self._recovering = True

    # rounds

    def sync(self) -> None:
        """Start from now: remember the stream's end, then reconcile with the active set."""
        self.last_id = self.tail_id()
        self.reconcile()

    def reconcile(self) -> None:
        """Make this process's faults match the active ones in Redis: apply the missing ones,
        stop those no longer there. Covers commands missed while Redis was unreachable or
        lost with a server that restarted without its data (kills excepted: they are instant).
        """
        control = FaultControl(self.redis, clock=self.clock)
        records = control.active(with_acks=False)
        for record in records:
            self._apply(record.fault, record.since, record.until, record.cmd_id)
        wanted = {r.fault.id for r in records}
        for local in self.manager.active():
            if local.fault.id not in wanted:
                self.manager.stop(local.fault.id, "cleared")
        self._reconciled_at = time.monotonic()
        self._beat()

    def _recover(self) -> None:
        """After a Redis outage: read on from our position (the stream may be intact), and
        reconcile with the active set in case it is not."""
        tail = self.tail_id()
        if stream_id(tail) < stream_id(self.last_id or "0-0"):
            self.last_id = tail
        self.reconcile()

    def poll_once(self, block_ms: int | None = None) -> int:
        """Read and apply the commands that arrived; returns how many."""
        if self.last_id is None:
            self.sync()
        n = self.read(block_ms)
        self._beat()
        self._end_claimed()
        return n

    def handle_command(self, entry_id: str, raw: str) -> None:
        """Apply one command; a malformed one is refused, logged and acknowledged as refused."""
        cmd_id = entry_id
        try:
            command = json.loads(raw)
            if not isinstance(command, dict):
                raise InvalidFaultCommand("fault command", raw, "must be a JSON object")
            cmd_id = str(command.get("cmd_id") or entry_id)
            op = command.get("op")
            if op == "inject":
                faults = command.get("faults")
                if not isinstance(faults, list) or not faults:
                    raise InvalidFaultCommand("fault command", raw, "'faults' must be a list")
                parsed = [parse_fault(f) for f in faults]  # all or none
                since = float(command.get("since", self.clock()))
                legs = 0
                for f in parsed:
                    legs += self._apply(f, since, since + f.duration_s, cmd_id)
                self._ack(cmd_id, ok=True, legs=legs, until=since + max(
                    f.duration_s for f in parsed))
            elif op == "stop":
                self.manager.stop(str(command.get("fault_id")))
                self._ack(cmd_id, ok=True)
            elif op == "clear":
                room = command.get("room")
                self.manager.clear(None if room is None else str(room))
                self._ack(cmd_id, ok=True)
            else:
                raise InvalidFaultCommand("fault command op", op, "must be inject, stop or clear")
        except (InvalidFaultCommand, ValueError, TypeError) as exc:
            message = str(exc)
            logger.warning("refused fault command %s: %s", entry_id, message)
            self.errors.append(f"{entry_id}: {message}")
            del self.errors[:-50]
            with contextlib.suppress(redis.RedisError):
                self._ack(cmd_id, ok=False, error=message)

    def _apply(self, fault: Fault, since: float, until: float, cmd_id: str) -> int:
        if until <= self.clock():
            return 0
        claimed = bool(self.redis.set(claim_key(fault.id), self.node, nx=True,
                                      ex=int(until - self.clock()) + ACK_GRACE_S))
        if not claimed:
            claimed = self.redis.get(claim_key(fault.id)) == self.node
        self.manager.apply(fault, since=since, until=until, report=claimed)
        if claimed:
            self._claimed[fault.id] = until
            self._audit_put(fault.id, "applied", {"node": self.node, "at": self.clock()})
        return self.manager.legs_matching(fault)

    def _ack(self, cmd_id: str, *, ok: bool, error: str | None = None, legs: int = 0,
             until: float | None = None) -> None:
        key = ack_key(cmd_id)
        value = {"ok": ok, "error": error, "at": self.clock(), "legs": legs}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, self.node, json.dumps(value))
        pipe.expire(key, int(max(0.0, (until or self.clock()) - self.clock())) + ACK_GRACE_S)
        pipe.execute()

    def _beat(self) -> None:
        self.redis.hset(NODES, self.node, str(self.clock()))

    def _end_claimed(self) -> None:
        now = self.clock()
        for fid, until in list(self._claimed.items()):
            if until <= now:
                del self._claimed[fid]
                self._audit_put(fid, "ended", {"at": until})

    # audit (its own thread: a MongoDB outage must not hold up fault commands)

    def _audit_put(self, fault_id: str, what: str, data: dict[str, Any]) -> None:
        if self.db is None:
            return
        with contextlib.suppress(queue.Full):
            self._audit.put_nowait((fault_id, what, data))
        if not self.running:  # driven by poll_once without threads: write now
            self._drain_audit()

    def _drain_audit(self) -> None:
        while True:
            try:
                item = self._audit.get_nowait()
            except queue.Empty:
                return
            self._write_audit(*item)

    def _audit_worker(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._audit.get(timeout=0.5)
            except queue.Empty:
                continue
            self._write_audit(*item)

    def _write_audit(self, fault_id: str, what: str, data: dict[str, Any]) -> None:
        assert self.db is not None
        coll = self.db[keys.FAULTS]
        try:
            if what == "applied":
                coll.update_one({"_id": fault_id}, {"$addToSet": {"applied_by": data["node"]},
                                                    "$min": {"applied_at": data["at"]}},
                                upsert=True)
            else:
                coll.update_one({"_id": fault_id, "status": "active"},
                                {"$set": {"status": "expired", "ended_at": data["at"]}})
        except pymongo.errors.PyMongoError as exc:
            logger.warning("fault audit write failed for %s: %s", fault_id, exc)


def start_fault_plane(services: Services, loop: asyncio.AbstractEventLoop, events: EventSink | None,
                      node: str) -> tuple[FaultManager, FaultConsumer]:
    """What an app process hosting media runs once: a FaultManager on the media loop, fed by a
    FaultConsumer thread. Register legs with ``manager.register_leg`` (or hand
    ``manager.leg_listener`` to ``LegRegistry.add_listener``); relays ask
    ``manager.video_effect`` (or use ``injector.VideoEffectFilter``) per frame."""
    manager = FaultManager(loop, events, node=node)
    consumer = FaultConsumer(services.redis, manager, services.db, node=node)
    consumer.start()
    return manager, consumer


def control_from_services(services: Services, by: str = "cli") -> FaultControl:
    """A publisher wired to an app's Services (Redis, MongoDB, embedded servers' pids)."""
    settings = services.settings
    outages = OutageController.from_discovery(
        settings.state_dir, embedded_redis=settings.embedded_redis,
        embedded_mongo=settings.embedded_mongo, redis_client=services.redis)
    return FaultControl(services.redis, services.db, outages=outages, by=by)


def backend_unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"Redis is unreachable, fault commands cannot be sent: {exc}")
