"""ChatPersister on real Valkey and SecantusDB: consumer crash, XAUTOCLAIM, trimming, bad input."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from videochat.chat.ledger import (
    COLLECTION,
    GROUP,
    audit_room,
    ensure_indexes,
    read_ledger,
    stream_key,
)
from videochat.chat.message import ChatMessage
from videochat.chat.persister import ChatPersister
from videochat.chat.queue import ChatQueue

ROOM = "retro"


class Crash(Exception):
    """Stands for the process dying: nothing after it runs, nothing is acknowledged."""


class CrashingPersister(ChatPersister):
    """Writes the first half of its first batch to MongoDB, then dies mid-batch."""

    def _store(self, messages: list[ChatMessage]) -> None:
        super()._store(messages[: len(messages) // 2])
        raise Crash


def _send(redis_conn: redis.Redis, db: Any, n: int) -> list[ChatMessage]:
    queue = ChatQueue(redis_conn, db)
    sent = [queue.send(ROOM, "carol", "Carol", f"note {i}") for i in range(n)]
    assert queue.flush(10)
    queue.close(1.0)
    return sent


def test_consumer_crash_mid_batch_is_redelivered_once(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    sent = _send(redis_conn, mongo_db, 150)
    crashing = CrashingPersister(redis_conn, mongo_db, consumer="crashes", batch_size=100)
    with pytest.raises(Crash):
        crashing.step(block_ms=100)
    # The dead consumer holds its whole batch, unacknowledged; half of it reached MongoDB.
    held = redis_conn.xpending_range(stream_key(ROOM), GROUP, "-", "+", 1000, "crashes")
    assert len(held) == 100
    assert mongo_db[COLLECTION].count_documents({"room": ROOM}) == 50

    survivor = ChatPersister(redis_conn, mongo_db, consumer="survivor", claim_idle_ms=200,
                             claim_interval_s=0.0, keep_s=0.0)
    time.sleep(0.3)
    for _ in range(10):  # bounded: a few rounds are enough to claim, read and trim
        survivor.step(block_ms=50)
        if redis_conn.xpending(stream_key(ROOM), GROUP)["pending"] == 0 and (
            survivor.stats["persisted"] >= 150
        ):
            break
    assert survivor.stats["claimed"] == 100
    assert redis_conn.xpending(stream_key(ROOM), GROUP)["pending"] == 0
    audit = audit_room(mongo_db, ROOM)
    assert (audit.stored, audit.duplicates, audit.missing) == (150, 0, 0)
    stored = {d["_id"] for d in mongo_db[COLLECTION].find({"room": ROOM}, {"_id": 1})}
    assert stored == {m.id for m in sent}
    ledger = read_ledger(redis_conn, ROOM)
    assert (ledger.sent, ledger.persisted) == (150, 150)


def test_trim_keeps_unacknowledged_entries(redis_conn: redis.Redis, mongo_db: Any) -> None:
    _send(redis_conn, mongo_db, 20)
    reader = ChatPersister(redis_conn, mongo_db, consumer="slow", batch_size=5)
    reader._refresh_rooms()
    reader._read(">", None)  # takes 5 entries and never acknowledges them
    worker = ChatPersister(redis_conn, mongo_db, consumer="worker", keep_s=0.0,
                           claim_idle_ms=60_000)
    worker.step(block_ms=50)
    worker.trim()
    entries = redis_conn.xrange(stream_key(ROOM))
    # The five pending entries (and whatever follows them) stay; nothing older than them is left.
    assert len(entries) == 20  # the pending ones are the first five, so nothing can go yet
    reader._persist(reader._read("0", None))
    worker.trim()
    left = redis_conn.xrange(stream_key(ROOM))
    assert len(left) == 1  # only the last delivered entry, kept as the group's read position
    assert audit_room(mongo_db, ROOM).stored == 20


def test_trim_respects_the_replay_window(redis_conn: redis.Redis, mongo_db: Any) -> None:
    _send(redis_conn, mongo_db, 10)
    worker = ChatPersister(redis_conn, mongo_db, keep_s=3600.0)
    worker.step(block_ms=50)
    assert worker.trim() == 0
    assert redis_conn.xlen(stream_key(ROOM)) == 10


def test_lost_consumer_group_is_recreated(redis_conn: redis.Redis, mongo_db: Any) -> None:
    _send(redis_conn, mongo_db, 5)
    worker = ChatPersister(redis_conn, mongo_db)
    worker.step(block_ms=50)
    redis_conn.xgroup_destroy(stream_key(ROOM), GROUP)
    queue = ChatQueue(redis_conn, mongo_db)
    queue.send(ROOM, "dave", "Dave", "after the group vanished")
    assert queue.flush(10)
    for _ in range(5):
        worker.step(block_ms=50)
    audit = audit_room(mongo_db, ROOM)
    assert (audit.stored, audit.duplicates) == (6, 0)
    queue.close(1.0)


def test_malformed_entry_is_skipped_and_counted(redis_conn: redis.Redis, mongo_db: Any) -> None:
    _send(redis_conn, mongo_db, 2)
    redis_conn.xadd(stream_key(ROOM), {"id": "x", "text": "\x00"})
    worker = ChatPersister(redis_conn, mongo_db)
    for _ in range(3):
        worker.step(block_ms=50)
    assert audit_room(mongo_db, ROOM).stored == 2
    assert read_ledger(redis_conn, ROOM).rejected == 1
    assert redis_conn.xpending(stream_key(ROOM), GROUP)["pending"] == 0


def test_indexes_keep_history_and_drop_the_old_origin_seq_index(mongo_db: Any) -> None:
    mongo_db[COLLECTION].create_index([("origin", 1), ("seq", 1)])
    ensure_indexes(mongo_db)
    ensure_indexes(mongo_db)  # idempotent
    keys = [list(ix["key"]) for ix in mongo_db[COLLECTION].index_information().values()]
    assert [("room", 1), ("sent_at", 1)] in keys
    assert [("origin", 1), ("seq", 1)] not in keys


class CountingPersister(ChatPersister):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def _store(self, messages: list[ChatMessage]) -> None:
        self.batches.append(len(messages))
        super()._store(messages)


def test_a_trickle_is_stored_in_few_batches_not_one_insert_per_message(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    worker = CountingPersister(redis_conn, mongo_db, block_ms=100, linger_s=1.0)
    worker.start()
    try:
        queue.send(ROOM, "dora", "Dora", "first")
        assert queue.wait_persisted(10)  # the first message after a quiet spell is not held back
        worker.batches.clear()
        for i in range(20):
            queue.send(ROOM, "dora", "Dora", f"trickle {i}")
            time.sleep(0.01)
        assert queue.wait_persisted(20)
        assert sum(worker.batches) == 20
        assert len(worker.batches) <= 5, worker.batches
        assert audit_room(mongo_db, ROOM).ok
    finally:
        worker.stop()
        queue.close(1.0)
