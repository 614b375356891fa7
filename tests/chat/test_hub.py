"""ChatHub on real Valkey and SecantusDB: history on join, live delivery, dedupe, listeners."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from videochat.chat.hub import ChatHub
from videochat.chat.ledger import read_ledger, stream_key
from videochat.chat.persister import ChatPersister
from videochat.chat.queue import ChatQueue

ROOM = "lobby"


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_history_on_join_merges_mongodb_and_the_stream_once(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    persister = ChatPersister(redis_conn, mongo_db, keep_s=3600.0)
    early = [queue.send(ROOM, "a", "Ann", f"early {i}") for i in range(5)]
    assert queue.flush(10)
    for _ in range(3):
        persister.step(block_ms=50)  # persisted, and still in the stream (replay window)
    late = [queue.send(ROOM, "b", "Ben", f"late {i}") for i in range(3)]
    assert queue.flush(10)  # not persisted yet: only in the stream

    hub = ChatHub(redis_conn, mongo_db)
    try:
        shown = hub.messages(ROOM)
        assert [m.id for m in shown] == [m.id for m in early + late]
        assert hub.messages(ROOM, since=early[-1].id) == late
        assert hub.messages(ROOM, since="unknown-id") == shown
    finally:
        hub.close()
        queue.close(1.0)


def test_history_from_mongodb_after_the_stream_was_trimmed(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    persister = ChatPersister(redis_conn, mongo_db, keep_s=0.0)
    sent = [queue.send(ROOM, "a", "Ann", f"m {i}") for i in range(10)]
    assert queue.flush(10)
    for _ in range(3):
        persister.step(block_ms=50)
    persister.trim()
    assert redis_conn.xlen(stream_key(ROOM)) <= 1
    hub = ChatHub(redis_conn, mongo_db)
    try:
        assert [m.id for m in hub.messages(ROOM)] == [m.id for m in sent]
    finally:
        hub.close()
        queue.close(1.0)


def test_listeners_are_called_for_new_messages_until_unsubscribed(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    calls: list[tuple[str, str]] = []
    arrived = threading.Event()

    def listener(room: str) -> None:
        calls.append((room, threading.current_thread().name))
        arrived.set()

    try:
        unsubscribe = hub.subscribe(ROOM, listener)
        msg = queue.send(ROOM, "a", "Ann", "ping")
        assert arrived.wait(5)
        assert calls[0] == (ROOM, "chat-hub")
        assert hub.messages(ROOM)[-1] == msg
        assert wait_for(lambda: read_ledger(redis_conn, ROOM).delivered == 1)
        unsubscribe()
        before = len(calls)
        queue.send(ROOM, "a", "Ann", "nobody listens")
        assert wait_for(lambda: len(hub.messages(ROOM)) == 2)
        assert len(calls) == before
    finally:
        hub.close()
        queue.close(1.0)


def test_a_duplicate_stream_entry_is_shown_once(redis_conn: redis.Redis, mongo_db: Any) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    try:
        hub.subscribe(ROOM, lambda room: None)
        msg = queue.send(ROOM, "a", "Ann", "say it once")
        assert queue.flush(10)
        # The same message appended again by some other path (e.g. a writer without the script).
        redis_conn.xadd(stream_key(ROOM), msg.to_fields())
        after = queue.send(ROOM, "a", "Ann", "next")
        assert wait_for(lambda: any(m.id == after.id for m in hub.messages(ROOM)))
        assert [m.text for m in hub.messages(ROOM)] == ["say it once", "next"]
        assert wait_for(lambda: read_ledger(redis_conn, ROOM).duplicates_suppressed == 1)
    finally:
        hub.close()
        queue.close(1.0)


def test_malformed_entries_are_skipped(redis_conn: redis.Redis, mongo_db: Any) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    try:
        hub.subscribe(ROOM, lambda room: None)
        redis_conn.xadd(stream_key(ROOM), {"text": "<no id>"})
        good = queue.send(ROOM, "a", "Ann", "fine")
        assert wait_for(lambda: hub.messages(ROOM) == [good])
    finally:
        hub.close()
        queue.close(1.0)


def test_a_room_added_while_the_reader_blocks_is_read_at_once(
    valkey_server: Any, redis_conn: redis.Redis, mongo_db: Any
) -> None:
    # A client with a long socket timeout, so the reader can block far longer than the test waits.
    patient = redis.Redis.from_url(valkey_server.url, decode_responses=True, socket_timeout=60)
    queue = ChatQueue(redis_conn, mongo_db)
    hub = ChatHub(patient, mongo_db, block_ms=30_000)
    arrived = threading.Event()
    try:
        hub.subscribe(ROOM, lambda room: None)
        time.sleep(0.3)  # the reader is now inside a 30 s XREAD that does not name "annex"
        hub.subscribe("annex", lambda room: arrived.set())
        queue.send("annex", "a", "Ann", "anyone here?")
        assert arrived.wait(3), "the new room waited for the running XREAD to time out"
        started = time.monotonic()
        hub.close(timeout=10)
        assert time.monotonic() - started < 3  # close() wakes the reader too
        assert redis_conn.keys("vc:chathub-wake:*") == []
    finally:
        hub.close()
        queue.close(1.0)
        patient.close()
