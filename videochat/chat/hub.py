"""ChatHub: one per process; reads the chat streams of rooms that have local listeners.

One background thread does a blocking XREAD over every room in use, keeps each room's messages
(deduplicated by message id) and calls the room's listeners, so the UI can wake the sessions that
show it. A room's history is loaded from MongoDB (plus the not yet persisted tail of its stream)
the first time it is used.

A room that gets its first local user while the reader is blocked in XREAD would otherwise wait
for that read to time out (up to `block_ms`) before its messages are read: the hub adds an entry to
its own small wake-up stream, which is part of every XREAD, so the read returns at once.

After any Redis error the hub rewinds its read positions by `rewind_s` and merges the last
`rewind_s` of MongoDB: if Redis lost its last second of writes and the senders re-sent them, or a
message was persisted before Redis forgot it, the hub still shows every message once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymongo
import pymongo.errors
import redis
from pymongo.database import Database

from videochat.backends import keys
from videochat.chat.ledger import COLLECTION, ledger_key, stream_key
from videochat.chat.message import ChatMessage, check_room
from videochat.exceptions import ValidationError

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]
Listener = Callable[[str], None]

_PREFIX = stream_key("")
_WAKE_TTL_MS = 60_000  # the wake-up stream is refreshed on use and vanishes after an idle minute


@dataclass
class _Room:
    messages: OrderedDict[str, ChatMessage] = field(default_factory=OrderedDict)
    cursor: str = "0-0"
    listeners: list[Listener] = field(default_factory=list)
    used_at: float = 0.0


class ChatHub:
    def __init__(
        self,
        client: redis.Redis,
        db: Database[MongoDoc],
        *,
        block_ms: int = 200,
        history_limit: int = 200,
        max_messages: int = 5000,
        rewind_s: float = 5.0,
        idle_room_s: float = 300.0,
        count_delivered: bool = True,
    ) -> None:
        self._redis = client
        self._db = db
        self._block_ms = block_ms
        self._history_limit = history_limit
        self._max_messages = max_messages
        self._rewind_s = rewind_s
        self._idle_room_s = idle_room_s
        self._count_delivered = count_delivered
        self._rooms: dict[str, _Room] = {}
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rewind = False
        self.duplicates_dropped = 0
        self.redis_up = True
        self._uncounted: dict[str, int] = {}
        self._dups: dict[str, int] = {}
        self._counted_at = 0.0
        self._ledger_interval_s = 0.5
        # Not under the chat stream prefix, so it can never be taken for a room.
        self._wake_key = keys.chat_hub_wake_key(uuid.uuid4().hex)
        self._wake_cursor = "0-0"

    # -- public API --------------------------------------------------------------------------

    def subscribe(self, room: str, callback: Listener) -> Callable[[], None]:
        """Call `callback(room)` from the hub thread whenever new messages arrive in `room`."""
        state = self._ensure_room(room)
        with self._lock:
            state.listeners.append(callback)
        self._ensure_thread()

        def unsubscribe() -> None:
            with self._lock:
                if callback in state.listeners:
                    state.listeners.remove(callback)
                state.used_at = time.monotonic()

        return unsubscribe

    def messages(self, room: str, since: str | None = None) -> list[ChatMessage]:
        """The room's messages in arrival order, or only those after message id `since`."""
        state = self._ensure_room(room)
        self._ensure_thread()
        with self._lock:
            state.used_at = time.monotonic()
            if since is not None and since in state.messages:
                # Walk back from the newest: a caller that keeps up reads only what is new.
                newer: list[ChatMessage] = []
                for msg in reversed(state.messages.values()):
                    if msg.id == since:
                        break
                    newer.append(msg)
                return newer[::-1]
            return list(state.messages.values())

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake()  # do not wait for the reader's XREAD to time out
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self._redis.delete(self._wake_key)
        except redis.RedisError:
            pass  # it expires on its own

    # -- loading ---------------------------------------------------------------------------

    def _ensure_room(self, room: str) -> _Room:
        check_room(room)
        with self._lock:
            state = self._rooms.get(room)
            if state is not None:
                return state
        with self._load_lock:
            with self._lock:
                if room in self._rooms:
                    return self._rooms[room]
            state = _Room(used_at=time.monotonic())
            for msg in self._history(room):
                state.messages[msg.id] = msg
            try:
                tail: Any = self._redis.xrevrange(stream_key(room), count=self._max_messages)
                for sid, fields in reversed(tail):
                    self._add(room, state, sid, fields)
                state.cursor = str(tail[0][0]) if tail else "0-0"
            except redis.RedisError as exc:
                logger.warning("chat history of %s from MongoDB only: %s", room, exc)
                self._rewind = True
            with self._lock:
                self._rooms[room] = state
            self._wake()
            return state

    def _wake(self) -> None:
        """Make the reader's current XREAD return, so it starts reading a room just added."""
        if self._thread is None or not self._thread.is_alive():
            return  # no reader blocked yet; the one that starts reads every room
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.pexpire(self._wake_key, _WAKE_TTL_MS)
            pipe.execute()
        except redis.RedisError as exc:
            logger.debug("chat hub wake-up not sent (the next read picks the room up): %s", exc)

    def _history(self, room: str, since: float | None = None) -> list[ChatMessage]:
        query: dict[str, Any] = {"room": room}
        if since is not None:
            query["sent_at"] = {"$gte": since}
        try:
            docs = list(self._db[COLLECTION].find(query).sort(
                [("sent_at", pymongo.DESCENDING), ("seq", pymongo.DESCENDING)]
            ).limit(self._history_limit))
        except pymongo.errors.PyMongoError as exc:
            logger.warning("chat history of %s unavailable from MongoDB: %s", room, exc)
            return []
        out = []
        for doc in reversed(docs):
            try:
                out.append(ChatMessage.from_doc(doc))
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                logger.error("skipping malformed chat document %s: %s", doc.get("_id"), exc)
        return out

    def _add(self, room: str, state: _Room, sid: str, fields: dict[str, str] | None) -> bool:
        """Keep one stream entry; False when it was already known (or unreadable)."""
        if fields is None:
            return False
        try:
            msg = ChatMessage.from_fields(fields, sid)
        except ValidationError as exc:
            logger.error("skipping malformed chat entry %s in %s: %s", sid, room, exc)
            return False
        known = state.messages.get(msg.id)
        if known is not None:
            if known.stream_id is not None and known.stream_id != sid:
                # The same message twice in the stream (re-sent after Redis lost the first copy).
                self.duplicates_dropped += 1
                self._dups[room] = self._dups.get(room, 0) + 1
            return False
        state.messages[msg.id] = msg
        while len(state.messages) > self._max_messages:
            state.messages.popitem(last=False)
        return True

    # -- the reader thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="chat-hub", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                self._drop_idle_rooms()
                cursors = {r: s.cursor for r, s in self._rooms.items()}
            if not cursors:
                self._stop.wait(self._block_ms / 1000)
                continue
            try:
                if self._rewind:
                    self._recover(cursors)
                    continue
                streams = {stream_key(r): c for r, c in cursors.items()}
                streams[self._wake_key] = self._wake_cursor
                reply = self._redis.xread(streams, count=1000,  # type: ignore[arg-type]
                                          block=self._block_ms)
            except redis.RedisError as exc:
                failures += 1
                if self.redis_up:
                    logger.warning("chat hub lost Redis: %s", exc)
                self.redis_up = False
                self._rewind = True
                self._stop.wait(min(2.0, 0.05 * 2 ** min(failures, 10)))
                continue
            failures = 0
            self.redis_up = True
            if reply:
                self._deliver(reply)
            elif self._count_delivered:
                self._flush_ledger()

    def _deliver(self, reply: Any) -> None:
        changed: dict[str, int] = {}
        with self._lock:
            for name, entries in reply or []:
                if name == self._wake_key:
                    self._wake_cursor = str(entries[-1][0])
                    continue
                room = str(name)[len(_PREFIX):]
                state = self._rooms.get(room)
                if state is None:
                    continue
                for sid, fields in entries:
                    if self._add(room, state, sid, fields):
                        changed[room] = changed.get(room, 0) + 1
                    state.cursor = sid
        self._notify(changed)

    def _notify(self, changed: dict[str, int]) -> None:
        for room in changed:
            with self._lock:
                listeners = list(self._rooms[room].listeners) if room in self._rooms else []
            for callback in listeners:
                try:
                    callback(room)
                except Exception:  # noqa: BLE001 - one bad listener must not stop delivery
                    logger.exception("chat listener failed for %s", room)
        if self._count_delivered:
            for room, n in changed.items():
                self._uncounted[room] = self._uncounted.get(room, 0) + n
            if time.monotonic() - self._counted_at >= self._ledger_interval_s:
                self._flush_ledger()

    def _flush_ledger(self) -> None:
        """Add delivery counts to the ledger, batched: one round trip per interval, not per read."""
        self._counted_at = time.monotonic()
        if not self._uncounted and not self._dups:
            return
        counts, self._uncounted = self._uncounted, {}
        dups, self._dups = self._dups, {}
        try:
            pipe = self._redis.pipeline(transaction=False)
            for room, n in counts.items():
                pipe.hincrby(ledger_key(room), "delivered", n)
            for room, n in dups.items():
                pipe.hincrby(ledger_key(room), "duplicates_suppressed", n)
            pipe.execute()
        except redis.RedisError as exc:
            logger.debug("delivery ledger not updated: %s", exc)

    def _recover(self, cursors: dict[str, str]) -> None:
        """After a Redis error: re-read a little of each stream and merge recent MongoDB."""
        changed: dict[str, int] = {}
        rewind_ms = int(self._rewind_s * 1000)
        for room, cursor in cursors.items():
            ms = int(cursor.partition("-")[0] or 0)
            start = f"{max(0, ms - rewind_ms)}-0" if ms else "0-0"
            with self._lock:
                state = self._rooms.get(room)
                newest = max((m.sent_at for m in state.messages.values()), default=None) \
                    if state else None
            recent = self._history(room, since=newest - self._rewind_s) if newest else \
                self._history(room)
            entries: Any = self._redis.xrange(stream_key(room), min=start,
                                              count=self._max_messages)
            with self._lock:
                state = self._rooms.get(room)
                if state is None:
                    continue
                for msg in sorted(recent, key=lambda m: (m.sent_at, m.origin, m.seq)):
                    if msg.id not in state.messages:
                        state.messages[msg.id] = msg
                        changed[room] = changed.get(room, 0) + 1
                for sid, fields in entries:
                    if self._add(room, state, sid, fields):
                        changed[room] = changed.get(room, 0) + 1
                    state.cursor = sid
        self._rewind = False
        self.redis_up = True
        logger.info("chat hub re-synchronised %d rooms after a Redis error", len(cursors))
        self._notify(changed)

    def _drop_idle_rooms(self) -> None:
        now = time.monotonic()
        for room in [r for r, s in self._rooms.items()
                     if not s.listeners and now - s.used_at > self._idle_room_s]:
            del self._rooms[room]
