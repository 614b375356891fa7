"""The chat panel through Streamlit's AppTest: plain-text rendering, pending, errors."""

from __future__ import annotations

import time
from typing import Any

import redis
from streamlit.testing.v1 import AppTest

from videochat.backends.embedded import free_port
from videochat.backends.services import redis_client
from videochat.chat.hub import ChatHub
from videochat.chat.message import ChatRateLimiter
from videochat.chat.queue import ChatQueue

ROOM = "ui-room"
EVIL = "<script>alert(1)</script> **bold** <img src=x onerror=alert(2)>"


def panel(hub, queue):  # type: ignore[no-untyped-def]  # run as a script: no imports above
    from videochat.ui.chat import render_chat

    render_chat("ui-room", "p1", "Ann <b>", hub, queue)


def _texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def _markup(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.markdown) + " ".join(
        str(c.value) for c in at.caption)


def test_messages_render_as_literal_text_and_pending_clears(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    queue = ChatQueue(redis_conn, mongo_db)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    try:
        queue.send(ROOM, "p2", "<i>Mallory</i>", EVIL)
        assert queue.flush(10)
        at = AppTest.from_function(panel, args=(hub, queue), default_timeout=20)
        at.run()
        assert EVIL in _texts(at)
        assert any(t.startswith("<i>Mallory</i> · ") for t in _texts(at))
        assert "script" not in _markup(at) and "Mallory" not in _markup(at)

        at.chat_input[0].set_value("mine **not bold**").run()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(hub.messages(ROOM)) < 2:
            time.sleep(0.05)
        at.run()
        assert "mine **not bold**" in _texts(at)
        own = [t for t in _texts(at) if t.startswith("Ann <b> (you)")]
        assert len(own) == 1 and "pending" not in own[0]
    finally:
        hub.close()
        queue.close(1.0)


def test_message_waits_as_pending_while_redis_is_unreachable(
    redis_conn: redis.Redis, mongo_db: Any
) -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0, socket_timeout=0.2)
    queue = ChatQueue(dead, mongo_db, backoff_cap_s=0.2)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    try:
        at = AppTest.from_function(panel, args=(hub, queue), default_timeout=20)
        at.run()
        at.chat_input[0].set_value("held back").run()
        time.sleep(0.5)
        at.run()
        assert "held back" in _texts(at)
        assert any("pending" in t for t in _texts(at))
        assert any("unreachable" in str(c.value) for c in at.caption)
        assert len(queue.pending(ROOM, "p1")) == 1
    finally:
        hub.close()
        queue.close(0.1)


def test_rule_violations_are_explained(redis_conn: redis.Redis, mongo_db: Any) -> None:
    limiter = ChatRateLimiter(redis_conn, limit=1)
    queue = ChatQueue(redis_conn, mongo_db, max_length=20, rate_limiter=limiter)
    hub = ChatHub(redis_conn, mongo_db, block_ms=100)
    try:
        at = AppTest.from_function(panel, args=(hub, queue), default_timeout=20)
        at.run()
        at.chat_input[0].set_value(" \x00\x1b ").run()
        assert "it must contain visible text" in at.warning[0].value
        at.chat_input[0].set_value("first").run()
        at.chat_input[0].set_value("second").run()
        assert "at most 1 messages per 1 s" in at.warning[0].value
    finally:
        hub.close()
        queue.close(1.0)
