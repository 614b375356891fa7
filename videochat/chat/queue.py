"""ChatQueue: the sending side of chat, on one Redis Stream per room, with a local outbox.

Why messages are neither lost nor duplicated:

* Each message carries a client-generated id and, per sender outbox ("origin"), a sequence
  number. One Lua script appends it to the stream only if it is the next message of that origin
  (`vc:chatseq:{room}:{origin}` holds the last accepted seq). A re-sent message that Redis already
  has is reported as a duplicate and not appended again; one that arrives early is refused as a gap,
  which keeps every sender's messages in order in the stream.
* The XADD, the seq key and the ledger counter change in one script, so they are written to the
  append-only file together: after a `kill -9`, Redis either has all three or none of them.
* Valkey runs with `appendfsync everysec`, so a crash can forget the last second of *acknowledged*
  XADDs. The sender therefore keeps every message (in flight) until it is persisted: acknowledged
  by the `persist` group, which happens only after the MongoDB insert, or found in MongoDB. A probe
  compares the seq key with what is in flight; messages Redis forgot go back to the front of the
  outbox and are sent again with the same id. The persister stores by id, so repeats are harmless.
* While Redis is unreachable the outbox holds messages in order and the flusher retries with
  exponential backoff; nothing is dropped. `send` raises `BackendUnavailable` only when the outbox
  is full (`max_unconfirmed`), never silently.

Keys and the delivery ledger are in `videochat.chat.ledger`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import pymongo.errors
import redis
from pymongo.database import Database

from videochat.chat.ledger import (
    COLLECTION,
    GROUP,
    ROOMS_KEY,
    SEQ_TTL_S,
    ChatAudit,
    ChatLedger,
    audit_room,
    ledger_key,
    read_ledger,
    seq_key,
    stream_key,
)
from videochat.chat.message import ChatMessage, ChatRateLimiter, check_room, clean_text
from videochat.exceptions import BackendUnavailable
from videochat.settings import Settings

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]

# KEYS: stream, seq key, ledger, rooms set. ARGV: seq, need, ttl, room, field/value pairs.
# `need` is the highest seq below this one that the sender still holds unconfirmed; every lower
# seq it no longer holds is already in MongoDB, so only `need` has to be in Redis first.
_SEND_SCRIPT = """
local seq = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq <= last then
  redis.call('HINCRBY', KEYS[3], 'duplicates_suppressed', 1)
  return {'dup', tostring(last)}
end
if last < need then
  return {'gap', tostring(last)}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'persist', '0', 'MKSTREAM')
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('SET', KEYS[2], seq, 'EX', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'sent', 1)
redis.call('SADD', KEYS[4], ARGV[4])
return {'ok', id}
"""


class ChatQueue:
    """Sends chat messages in order, exactly once, through the outbox and a flusher thread."""

    def __init__(
        self,
        client: redis.Redis,
        db: Database[MongoDoc],
        *,
        max_length: int = 2000,
        rate_limiter: ChatRateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        batch_size: int = 200,
        probe_interval_s: float = 0.25,
        mongo_check_s: float = 5.0,
        max_unconfirmed: int = 50_000,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
    ) -> None:
        self._redis = client
        self._db = db
        self.max_length = max_length
        self._limiter = rate_limiter
        self._clock = clock
        self._batch_size = batch_size
        self._probe_interval_s = probe_interval_s
        self._mongo_check_s = mongo_check_s
        self._mongo_at = 0.0
        self._max_unconfirmed = max_unconfirmed
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._script = client.register_script(_SEND_SCRIPT)
        # One lock, two conditions: `_work` wakes the flusher only when it has something to do,
        # `_cond` wakes callers of flush()/wait_persisted(). A single condition notified on
        # every send woke the flusher once per message just to find nothing to do, and it
        # then competed for the GIL with the hub thread delivering that very message.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._send_lock = threading.Lock()
        self._pending: deque[ChatMessage] = deque()
        # (room, origin) -> seq -> message accepted by Redis but not yet seen in MongoDB
        # Each OrderedDict is in seq order: seqs are accepted in order, and every held seq is
        # below every queued one, so first/last and popping from either end are O(1).
        self._inflight: dict[tuple[str, str], OrderedDict[int, ChatMessage]] = {}
        self._origins: dict[tuple[str, str], list[Any]] = {}  # (room, sender) -> [origin, next]
        self._redis_up = True
        self._last_error: str | None = None
        self._resent = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    @classmethod
    def from_settings(
        cls, client: redis.Redis, db: Database[MongoDoc], settings: Settings, **kwargs: Any
    ) -> ChatQueue:
        limiter = ChatRateLimiter(client, settings.chat_rate_per_s)
        return cls(client, db, max_length=settings.chat_max_length, rate_limiter=limiter,
                   **kwargs)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self, room: str, sender_id: str, sender_name: str, text: object,
        message_id: str | None = None,
    ) -> ChatMessage:
        """Validate, rate-limit and queue a message; it is delivered in the background.

        Raises InvalidChatMessage / InvalidDisplayName / InvalidRoomName for bad input,
        RateLimited when the participant sends too fast, BackendUnavailable if the outbox is full.
        """
        check_room(room)
        clean_text(text, self.max_length)  # bad text does not count against the rate limit
        if self._limiter is not None:
            self._limiter.check(room, sender_id, local_only=not self._redis_up)
        with self._cond:
            if self._count_unconfirmed() >= self._max_unconfirmed:
                raise BackendUnavailable(
                    f"chat outbox is full ({self._max_unconfirmed} messages wait for Redis or "
                    f"MongoDB); last error: {self._last_error}"
                )
            slot = self._origins.setdefault((room, sender_id), [uuid.uuid4().hex[:16], 1])
            msg = ChatMessage.create(
                room=room, sender_id=sender_id, sender_name=sender_name, text=text,
                max_length=self.max_length, origin=slot[0], seq=slot[1], sent_at=self._clock(),
                message_id=message_id,
            )
            slot[1] += 1
            self._pending.append(msg)
            # Fast path: nothing queued ahead and Redis up, so send from this thread now; a
            # hand-off to the flusher would cost a thread switch, which a busy machine makes slow.
            direct = (self._redis_up and not self._stopping and len(self._pending) == 1
                      and self._send_lock.acquire(blocking=False))
            self._ensure_thread()
            if not direct:
                self._work.notify()
                return msg
        try:
            self._transmit()
        except redis.RedisError as exc:
            with self._cond:
                self._redis_up = False
                self._last_error = str(exc)
            logger.warning("Redis unreachable, chat messages wait in the outbox: %s", exc)
        except Exception:  # noqa: BLE001 - the message stays queued; the flusher retries
            logger.exception("sending a chat message failed; the outbox keeps it")
        finally:
            self._send_lock.release()
            with self._cond:
                self._cond.notify_all()
                if self._pending:  # queued behind this one while it was being sent
                    self._work.notify()
        return msg

    def pending(self, room: str, sender_id: str | None = None) -> list[ChatMessage]:
        """Messages not yet accepted by Redis (shown as pending in the UI), oldest first."""
        with self._cond:
            return [m for m in self._pending
                    if m.room == room and (sender_id is None or m.sender_id == sender_id)]

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until Redis has accepted everything queued so far."""
        return self._wait(lambda: not self._pending, timeout)

    def wait_persisted(self, timeout: float = 30.0) -> bool:
        """Wait until every queued message has been seen in MongoDB."""
        return self._wait(lambda: not self._pending and not self._inflight, timeout)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "pending": len(self._pending),
                "unconfirmed": sum(len(v) for v in self._inflight.values()),
                "redis_up": self._redis_up,
                "last_error": self._last_error,
                "resent_after_loss": self._resent,
            }

    def ledger(self, room: str) -> ChatLedger:
        return read_ledger(self._redis, room)

    def audit(self, room: str) -> ChatAudit:
        return audit_room(self._db, room)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher after trying to drain the outbox for up to `timeout` seconds."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        left = len(self._pending)
        if left:
            logger.error("chat queue closed with %d messages still in the outbox", left)

    # -- internals -------------------------------------------------------------------------

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def _count_unconfirmed(self) -> int:
        return len(self._pending) + sum(len(v) for v in self._inflight.values())

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="chat-outbox", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        next_probe = 0.0
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not (
                    self._inflight and time.monotonic() >= next_probe
                ):
                    wait = self._probe_interval_s if self._inflight else 1.0
                    self._work.wait(wait)
                if self._stopping:
                    return
            try:
                with self._send_lock:
                    self._transmit()
                    if self._inflight and time.monotonic() >= next_probe:
                        self._probe()
                        next_probe = time.monotonic() + self._probe_interval_s
                if self._inflight and time.monotonic() >= self._mongo_at:
                    self._confirm_from_mongo()
            except redis.RedisError as exc:
                failures += 1
                delay = min(self._backoff_cap_s, self._backoff_base_s * 2 ** min(failures, 16))
                delay *= random.uniform(0.5, 1.0)
                with self._cond:
                    if self._redis_up:
                        logger.warning("Redis unreachable, chat messages wait in the outbox: %s",
                                       exc)
                    self._redis_up = False
                    self._last_error = str(exc)
                    self._work.wait(delay)
                continue
            except Exception:  # noqa: BLE001 - the flusher must survive to retry later
                logger.exception("chat flusher failed; retrying")
                failures += 1
                time.sleep(min(self._backoff_cap_s, self._backoff_base_s * 2 ** failures))
                continue
            if failures or not self._redis_up:
                logger.info("Redis reachable again; chat outbox flushing")
            failures = 0
            with self._cond:
                self._redis_up = True
                self._cond.notify_all()

    def _transmit(self) -> None:
        """Send the head of the outbox once. Only the holder of `_send_lock` may call this:
        it alone takes messages off the outbox, which keeps them in order."""
        with self._cond:
            batch, needs = self._next_batch()
        if batch:
            self._apply(batch, self._send_batch(batch, needs))

    def _next_batch(self) -> tuple[list[ChatMessage], list[int]]:
        """The head of the outbox and, per message, the seq that must be in Redis before it."""
        batch = list(islice(self._pending, self._batch_size))
        prev: dict[tuple[str, str], int] = {}
        needs = []
        for msg in batch:
            key = (msg.room, msg.origin)
            if key not in prev:
                held = self._inflight.get(key)
                prev[key] = next(reversed(held)) if held else 0  # held is in seq order
            needs.append(prev[key])
            prev[key] = msg.seq
        return batch, needs

    def _send_batch(self, batch: list[ChatMessage], needs: list[int]) -> list[Any]:
        # EVALSHA straight into the pipeline: redis-py's Script would add a SCRIPT EXISTS round
        # trip to every batch. After a Redis restart the script is gone: load it and re-run the
        # batch, which the idempotency check makes safe.
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for msg, need in zip(batch, needs, strict=True):
                args: list[Any] = [msg.seq, need, SEQ_TTL_S, msg.room]
                for k, v in msg.to_fields().items():
                    args += [k, v]
                pipe.evalsha(self._script.sha, 4, stream_key(msg.room),
                             seq_key(msg.room, msg.origin), ledger_key(msg.room), ROOMS_KEY,
                             *args)
            results = pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                return results
            if attempt == 0 and all(isinstance(e, redis.exceptions.NoScriptError)
                                    for e in errors):
                self._script.sha = self._redis.script_load(_SEND_SCRIPT)
                continue
            raise errors[0]
        raise AssertionError("unreachable")

    def _apply(self, batch: list[ChatMessage], results: list[Any]) -> None:
        with self._cond:
            probing = bool(self._inflight)
            for _ in batch:
                self._pending.popleft()
            refused: list[ChatMessage] = []
            requeue: list[ChatMessage] = []
            for msg, (status, value) in zip(batch, results, strict=True):
                key = (msg.room, msg.origin)
                if status == "gap":
                    if not refused or all(m.origin != msg.origin for m in refused):
                        requeue += self._take_lost(key, int(value))
                    refused.append(msg)
                    continue
                stored = msg.with_stream_id(value) if status == "ok" else msg
                self._inflight.setdefault(key, OrderedDict())[msg.seq] = stored
            self._pending.extendleft(reversed(requeue + refused))
            self._cond.notify_all()
            if not probing and self._inflight:
                self._work.notify()  # so the flusher starts probing for persistence
        if refused and not requeue:
            # Cannot happen while the seq bookkeeping holds; if it ever does, retrying at once
            # would spin, so let the flusher back off and keep the messages.
            raise RuntimeError(f"Redis refused chat messages of {refused[0].origin} as out of "
                               "order with nothing to re-send")

    def _take_lost(self, key: tuple[str, str], last: int) -> list[ChatMessage]:
        """Remove and return the in-flight messages of `key` that Redis no longer has."""
        held = self._inflight.get(key)
        if held is None:
            return []
        lost = []
        while held and next(reversed(held)) > last:
            lost.append(held.popitem(last=True)[1])
        lost.reverse()
        if not held:
            self._inflight.pop(key, None)
        if lost:
            self._resent += len(lost)
            logger.warning("Redis lost %d accepted chat messages of %s (seq > %d); re-sending",
                           len(lost), key[1], last)
        return lost

    def _probe(self) -> None:
        """Drop in-flight messages that are persisted; re-queue those Redis has forgotten.

        Persisted is read from the consumer group: the persister acknowledges an entry only after
        MongoDB has it, so an entry below the group's read position and not pending is in
        MongoDB. That costs two Redis commands per room instead of a MongoDB query per sender.
        Messages with no known stream id (accepted as duplicates) or unconfirmed for a long time
        are looked up in MongoDB, at most every `mongo_check_s`.
        """
        with self._cond:
            ranges = {k: (next(iter(v)), next(reversed(v))) for k, v in self._inflight.items()
                      if v}
        if not ranges:
            return
        rooms = sorted({room for room, _ in ranges})
        pipe = self._redis.pipeline(transaction=False)
        for room, origin in ranges:
            pipe.get(seq_key(room, origin))
        for room in rooms:
            pipe.xinfo_groups(stream_key(room))
            pipe.xpending(stream_key(room), GROUP)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
                raise reply
        lasts = [int(x) if isinstance(x, str) else 0 for x in replies[:len(ranges)]]
        acked_below = {room: _acked_boundary(replies[len(ranges) + 2 * i],
                                             replies[len(ranges) + 2 * i + 1])
                       for i, room in enumerate(rooms)}
        with self._cond:
            requeue: list[ChatMessage] = []
            for key, last in zip(ranges, lasts, strict=True):
                held = self._inflight.get(key)
                if held is None:
                    continue
                ld, pending_min = acked_below[key[0]]
                # Oldest first, stopping at the first entry not yet acknowledged: the cost is
                # what gets confirmed, not what is held (which grows if MongoDB falls behind).
                while held:
                    seq, msg = next(iter(held.items()))
                    if not (msg.stream_id and seq <= last
                            and _is_acked(_id_key(msg.stream_id), ld, pending_min)):
                        break
                    held.popitem(last=False)
                requeue += self._take_lost(key, last)
            for key in [k for k, v in self._inflight.items() if not v]:
                del self._inflight[key]
            if requeue:
                self._pending.extendleft(reversed(requeue))
            self._cond.notify_all()

    def _confirm_from_mongo(self) -> None:
        """Drop in-flight messages MongoDB has, for those the consumer group cannot vouch for:
        re-sends answered as duplicates (no stream id) and messages held for a long time.

        Runs outside `_send_lock`: dropping a persisted message is safe whatever is being sent.
        Capped, so a persister far behind does not turn this into a scan of everything held.
        """
        self._mongo_at = time.monotonic() + self._mongo_check_s
        old = self._clock() - 6 * self._mongo_check_s
        with self._cond:
            wanted = {m.id: (k, seq) for k, v in self._inflight.items()
                      for seq, m in islice(v.items(), 500) if not m.stream_id or m.sent_at < old}
        if not wanted:
            return
        found: list[tuple[tuple[str, str], int]] = []
        try:
            # By `_id`, the one index every insert maintains anyway (no (origin, seq) index: it
            # cost SecantusDB ~50 us per stored message, for a lookup this rare).
            ids = list(wanted)
            for i in range(0, len(ids), 1000):
                docs = self._db[COLLECTION].find({"_id": {"$in": ids[i:i + 1000]}}, {"_id": 1})
                found += [wanted[str(d["_id"])] for d in docs if str(d["_id"]) in wanted]
        except pymongo.errors.PyMongoError as exc:
            logger.warning("cannot confirm chat messages in MongoDB yet: %s", exc)
        with self._cond:
            for key, seq in found:
                held = self._inflight.get(key)
                if held is not None:
                    held.pop(seq, None)
                    if not held:
                        del self._inflight[key]
            self._cond.notify_all()


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _acked_boundary(groups: Any, pending: Any) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(group read position, oldest pending id) of the `persist` group; nothing acked if unknown."""
    if not isinstance(groups, list) or not isinstance(pending, dict):
        return (0, 0), (0, 0)
    group = next((g for g in groups if g.get("name") == GROUP), None)
    if group is None:
        return (0, 0), (0, 0)
    ld = _id_key(str(group["last-delivered-id"]))
    return ld, _id_key(str(pending["min"])) if pending.get("pending") else None


def _is_acked(entry: tuple[int, int], ld: tuple[int, int], pending_min: tuple[int, int] | None
              ) -> bool:
    return entry <= ld and (pending_min is None or entry < pending_min) and entry > (0, 0)

