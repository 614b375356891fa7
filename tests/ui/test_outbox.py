"""The chat outbox route's core on the real Valkey and SecantusDB: messages typed while the
server was away are queued once, whatever the page re-posts; bad bodies are refused by name."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from videochat.chat.ledger import stream_key
from videochat.chat.message import ChatRateLimiter
from videochat.chat.queue import ChatQueue
from videochat.media.room import RoomRegistry
from videochat.ui.outbox import MAX_ITEMS, deliver, parse

ID1, ID2, ID3 = "a" * 32, "b" * 32, "c" * 32


def body(**kw: Any) -> dict[str, Any]:
    return {"pid": "0123456789ab", "token": "t", "room": "r1",
            "messages": [{"id": ID1, "text": "hi"}], **kw}


def test_parse_names_what_is_wrong() -> None:
    assert parse(body()) == ("0123456789ab", "t", "r1", [(ID1, "hi")])
    for bad, words in (([], "JSON object"), (body(pid=""), "non-empty"),
                       (body(messages=[]), f"1-{MAX_ITEMS}"),
                       (body(messages=[{"id": ID1}] * (MAX_ITEMS + 1)), f"1-{MAX_ITEMS}"),
                       (body(messages=[{"id": "nope", "text": "x"}]), "'nope' must be 32"),
                       (body(messages=[{"id": ID1, "text": 3}]), "no text")):
        with pytest.raises(ValueError, match=words):
            parse(bad)


def test_deliver_sends_each_message_once(redis_conn: redis.Redis, mongo_db: Any) -> None:
    queue = ChatQueue(redis_conn, mongo_db, rate_limiter=ChatRateLimiter(redis_conn, 2))
    registry = RoomRegistry(defer=lambda d, fn: None)
    ana = registry.join("r1", "ana")
    rt = SimpleNamespace(registry=registry, services=SimpleNamespace(redis=redis_conn),
                         chat=SimpleNamespace(queue=queue))
    try:
        items = [(ID1, "one"), (ID2, "two"), (ID3, "   ")]
        first = deliver(rt, ana.id[:12], "r1", items)
        assert first["delivered"] == [ID1, ID2] and first["refused"] == [ID3]
        again = deliver(rt, ana.id[:12], "r1", items[:2])  # the answer was lost: re-posted
        assert again["duplicate"] == [ID1, ID2] and again["delivered"] == []
        assert deliver(rt, "ffffffffffff", "r1", [("d" * 32, "x")])["retry"] == ["d" * 32]
        assert queue.flush(10)
        entries = redis_conn.xrange(stream_key("r1"))
        texts = [(f.get(b"text") or f.get("text")) for _, f in entries]  # type: ignore[union-attr]
        assert sorted(t.decode() if isinstance(t, bytes) else t for t in texts) == ["one", "two"]
    finally:
        queue.close()
