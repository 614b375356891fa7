"""ChatQueue against real embedded Valkey and SecantusDB: idempotency, order, outages, kill -9.

The outage tests run their own Valkey (so killing it never disturbs other tests) and drive the
full path: ChatQueue (outbox) -> stream -> ChatHub (what a participant sees) and ChatPersister
(MongoDB). "0 lost, 0 duplicated" is checked on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from videochat.backends.embedded import ValkeyProcess
from videochat.backends.services import redis_client
from videochat.chat.hub import ChatHub
from videochat.chat.ledger import COLLECTION, audit_room, read_ledger, stream_key
from videochat.chat.message import ChatMessage
from videochat.chat.persister import ChatPersister
from videochat.chat.queue import ChatQueue
from videochat.exceptions import BackendUnavailable, InvalidChatMessage

ROOM = "standup"
SENDERS = [("alice", "Alice"), ("bob", "Bob")]


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


class Stack:
    """One app process worth of chat: queue, persister, hub, all on the same clients."""

    def __init__(self, client: redis.Redis, db: Any) -> None:
        self.redis = client
        self.db = db
        self.queue = ChatQueue(client, db, probe_interval_s=0.1, backoff_cap_s=0.3)
        self.persister = ChatPersister(client, db, block_ms=100, claim_idle_ms=2000,
                                       claim_interval_s=0.5, keep_s=0.5, trim_interval_s=0.3)
        self.hub = ChatHub(client, db, block_ms=100)
        self.wakeups = 0
        self.hub.subscribe(ROOM, self._wake)
        self.persister.start()

    def _wake(self, room: str) -> None:
        self.wakeups += 1

    def close(self) -> None:
        self.queue.close(1.0)
        self.persister.stop()
        self.hub.close()
        self.redis.close()


@pytest.fixture
def stack(redis_conn: redis.Redis, mongo_db: Any) -> Iterator[Stack]:
    s = Stack(redis_conn, mongo_db)
    yield s
    s.close()


def test_send_delivers_persists_and_counts(stack: Stack) -> None:
    sent = [stack.queue.send(ROOM, "alice", "Alice", f"hi {i} <b>not bold</b>") for i in range(20)]
    assert stack.queue.flush(10)
    assert stack.queue.wait_persisted(20)
    assert wait_for(lambda: len(stack.hub.messages(ROOM)) == 20)
    shown = stack.hub.messages(ROOM)
    assert [m.id for m in shown] == [m.id for m in sent]
    assert shown[0].text == "hi 0 <b>not bold</b>"  # stored verbatim; the UI shows it literally
    assert [m.seq for m in sent] == list(range(1, 21))
    assert stack.wakeups >= 1
    assert wait_for(lambda: read_ledger(stack.redis, ROOM).delivered == 20)
    ledger = read_ledger(stack.redis, ROOM)
    assert (ledger.sent, ledger.persisted, ledger.duplicates_suppressed) == (20, 20, 0)
    audit = audit_room(stack.db, ROOM)
    assert (audit.stored, audit.duplicates, audit.missing) == (20, 0, 0)
    assert stack.hub.messages(ROOM, since=sent[17].id) == sent[18:]


def test_resending_the_same_message_is_suppressed(redis_conn: redis.Redis, mongo_db: Any) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    msg = ChatMessage.create(room=ROOM, sender_id="a", sender_name="A", text="once",
                             max_length=100, origin="ab" * 8, seq=1, sent_at=time.time())
    # What redis-py's retry does when a reply is lost after the script ran: run it again.
    first = queue._send_batch([msg], [0])
    again = queue._send_batch([msg, msg], [0, 0])
    assert first[0][0] == "ok"
    assert [r[0] for r in again] == ["dup", "dup"]
    assert redis_conn.xlen(stream_key(ROOM)) == 1
    assert read_ledger(redis_conn, ROOM).duplicates_suppressed == 2


def test_out_of_order_send_is_refused(redis_conn: redis.Redis, mongo_db: Any) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    second = ChatMessage.create(room=ROOM, sender_id="a", sender_name="A", text="second",
                                max_length=100, origin="cd" * 8, seq=2, sent_at=time.time())
    assert queue._send_batch([second], [1])[0][0] == "gap"
    assert redis_conn.exists(stream_key(ROOM)) == 0


def test_invalid_input_is_rejected_before_queueing(stack: Stack) -> None:
    with pytest.raises(InvalidChatMessage, match="at most 2000 characters"):
        stack.queue.send(ROOM, "alice", "Alice", "x" * 2001)
    with pytest.raises(InvalidChatMessage, match="visible text"):
        stack.queue.send(ROOM, "alice", "Alice", " \x00\x07 \n")
    # A refused message does not use up a sequence number: the next one is still seq 1.
    assert stack.queue.send(ROOM, "alice", "Alice", "ok").seq == 1


def test_full_outbox_raises_instead_of_dropping(own_valkey: ValkeyProcess, mongo_db: Any) -> None:
    client = redis_client(own_valkey.url, retries=0, socket_timeout=0.5)
    queue = ChatQueue(client, mongo_db, max_unconfirmed=5, backoff_cap_s=0.2)
    own_valkey.kill()
    try:
        for i in range(5):
            queue.send(ROOM, "alice", "Alice", f"m{i}")
        with pytest.raises(BackendUnavailable, match="outbox is full"):
            queue.send(ROOM, "alice", "Alice", "one too many")
        assert len(queue.pending(ROOM)) == 5
    finally:
        own_valkey.start()
        assert queue.flush(10)
        queue.close(1.0)


def test_outbox_holds_messages_through_an_outage(own_valkey: ValkeyProcess, mongo_db: Any) -> None:
    s = Stack(redis_client(own_valkey.url), mongo_db)
    try:
        s.queue.send(ROOM, "alice", "Alice", "before")
        assert s.queue.flush(10)
        own_valkey.kill()
        during = [s.queue.send(ROOM, "alice", "Alice", f"during {i}") for i in range(30)]
        time.sleep(1.0)
        # Still waiting, in order, shown as pending; nothing dropped.
        assert [m.id for m in s.queue.pending(ROOM, "alice")] == [m.id for m in during]
        assert s.queue.status()["redis_up"] is False
        own_valkey.start()
        assert s.queue.flush(15)
        assert s.queue.wait_persisted(30)
        texts = [f["text"] for _, f in s.redis.xrange(stream_key(ROOM))]  # type: ignore[union-attr]
        assert texts[-30:] == [f"during {i}" for i in range(30)]
        assert wait_for(lambda: len(s.hub.messages(ROOM)) == 31)
        assert [m.text for m in s.hub.messages(ROOM)] == ["before"] + [m.text for m in during]
        audit = audit_room(mongo_db, ROOM)
        assert (audit.stored, audit.duplicates, audit.missing) == (31, 0, 0)
    finally:
        s.close()


def _aof_file(server: ValkeyProcess) -> Path:
    return sorted(server.data_dir.rglob("*.incr.aof"))[-1]


def _run_thousand_with_kill(server: ValkeyProcess, db: Any, lose_tail: bool) -> Stack:
    """Send 1,000 messages from two senders; kill -9 Redis after 500, restart it after 600.

    With `lose_tail`, the append-only file is also cut back to where it was after message 400
    before the restart: exactly what `appendfsync everysec` loses when the machine dies, i.e.
    100 acknowledged XADDs (and the seq keys and ledger counts written with them) are gone.
    The persister is paused over that stretch so those messages exist nowhere but in the
    senders' outboxes.
    """
    s = Stack(redis_client(server.url), db)
    mark = None
    for i in range(1000):
        sender, name = SENDERS[i % 2]
        s.queue.send(ROOM, sender, name, f"{name} #{i // 2}")
        if i == 399 and lose_tail:
            assert s.queue.flush(10)
            assert s.queue.wait_persisted(30)
            s.persister.stop()
            mark = _aof_file(server).stat().st_size
        if i == 499:
            assert s.queue.flush(10)
            server.kill()
            if mark is not None:
                aof = _aof_file(server)
                aof.write_bytes(aof.read_bytes()[:mark])
        if i == 599:
            server.start()
            s.persister.start()
        time.sleep(0.001)
    assert s.queue.flush(30)
    assert s.queue.wait_persisted(60), s.queue.status()
    return s


def _assert_exactly_once(s: Stack) -> None:
    expected = {name: [f"{name} #{k}" for k in range(500)] for _, name in SENDERS}
    assert wait_for(lambda: len(s.hub.messages(ROOM)) >= 1000, 30)
    time.sleep(0.5)  # let any late duplicate arrive, so the next assertions could see it
    shown = s.hub.messages(ROOM)
    assert len(shown) == 1000
    assert len({m.id for m in shown}) == 1000
    for _, name in SENDERS:
        assert [m.text for m in shown if m.sender_name == name] == expected[name]
    audit = audit_room(s.db, ROOM)
    assert (audit.stored, audit.origins, audit.duplicates, audit.missing) == (1000, 2, 0, 0)
    assert s.db[COLLECTION].count_documents({"room": ROOM}) == 1000
    assert s.queue.status()["pending"] == 0 and s.queue.status()["unconfirmed"] == 0
    ledger = read_ledger(s.redis, ROOM)
    assert wait_for(lambda: read_ledger(s.redis, ROOM).persisted == ledger.sent, 10)


def test_kill_9_redis_mid_thousand_messages_exactly_once(
    own_valkey: ValkeyProcess, mongo_db: Any
) -> None:
    s = _run_thousand_with_kill(own_valkey, mongo_db, lose_tail=False)
    try:
        _assert_exactly_once(s)
    finally:
        s.close()


def test_kill_9_losing_the_last_acknowledged_writes_exactly_once(
    own_valkey: ValkeyProcess, mongo_db: Any
) -> None:
    s = _run_thousand_with_kill(own_valkey, mongo_db, lose_tail=True)
    try:
        _assert_exactly_once(s)
        # The 100 acknowledged messages Redis forgot were re-sent from the outboxes...
        assert s.queue.status()["resent_after_loss"] == 100
        # ...and the hub, which had shown them before the crash, suppressed the second copies.
        assert wait_for(lambda: read_ledger(s.redis, ROOM).duplicates_suppressed >= 100, 5)
    finally:
        s.close()


def test_duplicate_answer_is_confirmed_through_mongodb(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    """A re-send answered "dup" has no stream id, so only MongoDB can confirm it."""
    queue = ChatQueue(redis_conn, mongo_db, probe_interval_s=0.05, mongo_check_s=0.1)
    persister = ChatPersister(redis_conn, mongo_db, block_ms=50)
    persister.start()
    try:
        msg = ChatMessage.create(room=ROOM, sender_id="a", sender_name="A", text="twice",
                                 max_length=100, origin="ef" * 8, seq=1, sent_at=time.time())
        assert queue._send_batch([msg], [0])[0][0] == "ok"  # the reply was "lost"...
        with queue._cond:  # ...so the sender still holds it and sends it again
            queue._pending.append(msg)
            queue._ensure_thread()
            queue._cond.notify_all()
        assert queue.flush(10)
        assert queue.status()["unconfirmed"] in (0, 1)
        assert queue.wait_persisted(20), queue.status()
        assert read_ledger(redis_conn, ROOM).duplicates_suppressed == 1
        assert audit_room(mongo_db, ROOM).stored == 1
    finally:
        persister.stop()
        queue.close(1.0)
