"""ChatMessage validation and sanitising (with hypothesis), and the Redis rate limit."""

from __future__ import annotations

import time
import unicodedata

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from videochat.backends.embedded import free_port
from videochat.backends.services import redis_client
from videochat.chat.message import ChatMessage, ChatRateLimiter, sanitize_text
from videochat.exceptions import (
    InvalidChatMessage,
    InvalidDisplayName,
    InvalidRoomName,
    RateLimited,
)

ORIGIN = "0123456789abcdef"


def make(text: object, max_length: int = 2000, **kw: object) -> ChatMessage:
    args: dict[str, object] = dict(room="r1", sender_id="p1", sender_name="Ann", text=text,
                                   max_length=max_length, origin=ORIGIN, seq=1, sent_at=1.5)
    args.update(kw)
    return ChatMessage.create(**args)  # type: ignore[arg-type]


def test_control_characters_removed_newline_and_tab_kept() -> None:
    assert make("a\x00b\x07c\x1b[31md\x7f\x85e").text == "abc[31mde"
    assert make("line 1\r\nline 2\rline 3\n\tindented").text == "line 1\nline 2\nline 3\n\tindented"


def test_unicode_is_kept_as_typed() -> None:
    for text in ["héllo wörld", "مرحبا بالعالم", "こんにちは", "👩‍👩‍👧 family", "e\u0301", "𝔘𝔫𝔦"]:
        assert make(text).text == text


def test_bidi_overrides_are_removed() -> None:
    assert make("invoice\u202egnp.exe").text == "invoicegnp.exe"


def test_html_and_markdown_are_kept_as_literal_text() -> None:
    text = "<script>alert(1)</script> **bold** [x](javascript:alert(1))"
    assert make(text).text == text  # never interpreted: the UI renders plain text


def test_rules_are_named_in_errors() -> None:
    with pytest.raises(InvalidChatMessage, match="must contain visible text"):
        make("   \n\t \x00 ")
    with pytest.raises(InvalidChatMessage, match="at most 10 characters .this one has 11"):
        make("x" * 11, max_length=10)
    with pytest.raises(InvalidChatMessage, match="must be text"):
        make(42)
    with pytest.raises(InvalidDisplayName):
        make("hi", sender_name="")
    with pytest.raises(InvalidRoomName):
        make("hi", room="")
    assert make("x" * 10, max_length=10).text == "x" * 10


def test_round_trips_through_stream_fields_and_documents() -> None:
    msg = make("hello\nthere 👋", sent_at=1700000000.123456)
    again = ChatMessage.from_fields(msg.to_fields(), "1-0")
    assert again == msg and again.stream_id == "1-0"
    assert ChatMessage.from_doc(msg.to_doc()) == msg
    assert msg.to_doc()["_id"] == msg.id


def test_malformed_stream_entry_is_rejected() -> None:
    with pytest.raises(InvalidChatMessage):
        ChatMessage.from_fields({"id": "x"})
    fields = make("hi").to_fields()
    fields["text"] = "evil\x00"
    with pytest.raises(InvalidChatMessage, match="sanitised"):
        ChatMessage.from_fields(fields)


def _allowed(ch: str) -> bool:
    return ch in "\n\t" or (unicodedata.category(ch) not in ("Cc", "Cs")
                            and ch not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_sanitize_never_raises_and_removes_only_what_it_must(text: str) -> None:
    clean = sanitize_text(text)
    assert all(_allowed(ch) for ch in clean)
    assert clean == clean.strip()
    assert sanitize_text(clean) == clean
    # Everything allowed is kept, in order (CR is the only character turned into another).
    expected = "".join(ch for ch in text.replace("\r\n", "\n").replace("\r", "\n")
                       if _allowed(ch)).strip()
    assert clean == expected
    clean.encode("utf-8")  # storable in Redis and MongoDB


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=2000))
def test_valid_text_is_accepted_unchanged(text: str) -> None:
    if not text.strip() or any(not _allowed(ch) for ch in text):
        return
    msg = make(text)
    assert msg.text == text.strip()
    assert ChatMessage.from_fields(msg.to_fields()) == msg


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_in_redis_is_shared_and_slides(redis_conn: redis.Redis) -> None:
    clock = FakeClock()
    a = ChatRateLimiter(redis_conn, limit=10, clock=clock)
    b = ChatRateLimiter(redis_conn, limit=10, clock=clock)  # another app process
    for i in range(10):
        clock.now += 0.01
        (a if i % 2 else b).check("r1", "p1")
    with pytest.raises(RateLimited, match="at most 10 per 1 s"):
        b.check("r1", "p1")
    a.check("r1", "p2")  # other participants are not affected
    a.check("r2", "p1")  # nor the same participant in another room
    clock.now += 0.95  # the first messages leave the one-second window
    a.check("r1", "p1")
    assert redis_conn.pttl(ChatRateLimiter.key("r1", "p1")) > 0


def test_rate_limit_falls_back_to_the_process_when_redis_is_down() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0, socket_timeout=0.2)
    limiter = ChatRateLimiter(client, limit=3, clock=time.time)
    for _ in range(3):
        limiter.check("r1", "p1")
    with pytest.raises(RateLimited):
        limiter.check("r1", "p1")
