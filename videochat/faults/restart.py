"""Faults interrupted by a restart of the app process that applied them (issue 17).

A fault lives in two places: its record (Redis `vc:faults:active`, the MongoDB audit, a
`fault_started` event) and its effect (the injector's state in the app's memory, a SIGSTOPped
embedded server for backend outages). A crash or a deploy ends the effect but not the record,
and the next process's fault consumer would re-apply every active record on start-up: a fault
injected for 60 s would outlive the restart it was never meant to span, and a QA window or a
diagnostics band would stay open.

So, at start-up and before the fault consumer reads the active set, `end_interrupted_faults`
ends what this node was applying: the active records it had acknowledged are stopped (a stop
command reaches every process; a backend outage is resumed), audit records left "active" past
their end are closed, and every one of them that has a `fault_started` event and no
`fault_ended` gets a `fault_ended` with reason `server_restart`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pymongo.errors
import redis

from videochat.backends import keys
from videochat.events import CallEvent
from videochat.faults.control import control_from_services

if TYPE_CHECKING:
    from videochat.backends.services import Services

logger = logging.getLogger(__name__)

REASON = "server_restart"
BY = "server_restart"


def end_interrupted_faults(services: Services, node: str, emit: Callable[[CallEvent], None],
                           *, clock: Callable[[], float] = time.time) -> list[str]:
    """End the faults this node was applying when its previous process stopped; returns
    their ids. Never raises: a backend that is down must not keep the app from starting."""
    ended: dict[str, dict[str, Any]] = {}
    now = clock()
    try:
        control = control_from_services(services, by=BY)
        for record in control.active(with_acks=True):
            ack = record.acks.get(node)
            if not (ack and ack.get("ok")):
                continue  # applied elsewhere only: that process still holds it
            control.stop(record.fault.id)
            ended[record.fault.id] = {"room": record.fault.room,
                                      "participant": record.fault.participant,
                                      "kind": record.fault.kind, "since": record.since,
                                      "until": record.until}
    except redis.RedisError as exc:
        logger.warning("could not end the faults of the previous process (Redis): %s", exc)
    try:
        audit = services.db[keys.FAULTS]
        for doc in audit.find({"status": "active", "applied_by": node}):
            fid = str(doc["_id"])
            until = float(doc.get("until") or now)
            if fid not in ended:
                audit.update_one({"_id": fid, "status": "active"}, {"$set": {
                    "status": "expired" if until <= now else "stopped",
                    "ended_at": min(until, now), "ended_by": BY}})
                ended[fid] = {"room": doc.get("room"), "participant": doc.get("participant"),
                              "kind": doc.get("kind"), "since": doc.get("since"),
                              "until": until}
        for fid, rec in ended.items():
            _close_event(services, fid, rec, node, emit, now)
    except pymongo.errors.PyMongoError as exc:
        logger.warning("could not close the fault records of the previous process: %s", exc)
    if ended:
        logger.warning("ended %d fault(s) interrupted by the restart: %s", len(ended),
                       ", ".join(sorted(ended)))
    return sorted(ended)


def _close_event(services: Services, fid: str, rec: dict[str, Any], node: str,
                 emit: Callable[[CallEvent], None], now: float) -> None:
    room = rec.get("room")
    if not isinstance(room, str):
        return
    since = float(rec.get("since") or now)
    events = services.db[keys.EVENTS]
    window = {"room": room, "at": {"$gte": datetime.fromtimestamp(since, UTC)
                                   - timedelta(seconds=5)}, "data.fault_id": fid}
    if events.find_one({**window, "kind": "fault_started"}) is None:
        return  # never reported started: nothing to close
    if events.find_one({**window, "kind": "fault_ended"}) is not None:
        return
    until = float(rec.get("until") or now)
    emit(CallEvent(
        kind="fault_ended", room=room, participant=rec.get("participant"),
        at=datetime.fromtimestamp(min(until, now), UTC),
        data={"fault_id": fid, "fault_kind": rec.get("kind"), "since": since, "until": until,
              "node": node, "reason": REASON},
    ))
