"""Calls and participants in MongoDB (`calls`, `participants`), written off the caller's thread.

Writes are idempotent upserts keyed by call id / participant id, queued and retried with
backoff, so a MongoDB outage delays the log but loses nothing that fits in the queue; overflow
is counted (`dropped`), never silent.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import pymongo.errors
from pymongo.database import Database

from videochat.backends import keys

logger = logging.getLogger(__name__)


def _ts(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class CallLog:
    def __init__(self, db: Database[dict[str, Any]], maxsize: int = 10_000) -> None:
        self.db = db
        self._queue: queue.Queue[tuple[str, dict[str, Any], dict[str, Any]]] = queue.Queue(maxsize)
        self.dropped = 0
        self.written = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="call-log", daemon=True)
        self._thread.start()

    def _put(self, collection: str, key: dict[str, Any], update: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((collection, key, update))
        except queue.Full:
            self.dropped += 1
            logger.error("call log queue full: %d updates dropped", self.dropped)

    def participant_joined(self, *, room: str, call_id: str, participant_id: str, name: str,
                           joined_at: float, node: str) -> None:
        self._put(keys.CALLS, {"_id": call_id}, {
            "$setOnInsert": {"room": room, "started_at": _ts(joined_at)},
            "$set": {"active": True, "node": node},
            "$addToSet": {"participants": participant_id},
        })
        self._put(keys.PARTICIPANTS, {"_id": participant_id}, {"$set": {
            "room": room, "call_id": call_id, "name": name, "joined_at": _ts(joined_at),
            "left_at": None, "node": node}})

    def participant_left(self, *, call_id: str, participant_id: str, left_at: float,
                         reason: str, call_ended: bool) -> None:
        self._put(keys.PARTICIPANTS, {"_id": participant_id},
                  {"$set": {"left_at": _ts(left_at), "left_reason": reason}})
        if call_ended:
            self._put(keys.CALLS, {"_id": call_id},
                      {"$set": {"active": False, "ended_at": _ts(left_at)}})

    def _run(self) -> None:
        delay = 0.2
        item = None
        while not self._stop.is_set() or not self._queue.empty():
            if item is None:
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
            collection, key, update = item
            try:
                self.db[collection].update_one(key, update, upsert=True)
                self.written += 1
                item, delay, self.last_error = None, 0.2, None
            except pymongo.errors.PyMongoError as exc:
                self.last_error = str(exc).split(",")[0]
                logger.warning("call log write failed, retrying in %.1f s: %s", delay,
                               self.last_error)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def flush(self, timeout: float = 10.0) -> bool:
        deadline = threading.Event()
        waited = 0.0
        while (not self._queue.empty()) and waited < timeout:
            deadline.wait(0.05)
            waited += 0.05
        return self._queue.empty()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
