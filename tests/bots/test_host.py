"""Bot participants on a real asyncio loop and a real RoomRegistry; control through real Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from videochat.bots.host import (
    BotConsumer,
    BotControl,
    BotHost,
    add_bot,
    relay_latency,
    start_bot_plane,
)
from videochat.exceptions import BackendUnavailable, NotFound, ValidationError
from videochat.media.room import RoomRegistry


@pytest.fixture
def host(loop: asyncio.AbstractEventLoop) -> Iterator[BotHost]:
    registry = RoomRegistry(spare_delay_s=0.0, defer=lambda d, fn: None)
    h = BotHost(registry, loop, width=320, height=240, fps=20)
    yield h
    h.close()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_bot_joins_and_feeds_its_hubs(host: BotHost) -> None:
    me = host.add("room-a", "bot")
    assert me.session_id is None
    assert host.registry.find(me.id) is me
    wait_for(lambda: me.video_hub.frames_in >= 10 and me.audio_hub.frames_in >= 10, 5,
             "the bot's hubs to receive frames")
    assert me.video_hub.size == (320, 240)


def test_two_bots_receive_each_other_through_the_relay(host: BotHost) -> None:
    a = host.add("room-b", "bot")
    b = host.add("room-b", "bot")
    assert b.name == "bot (2)"  # named apart like two tabs
    wait_for(lambda: all(
        sum(r.probe.frames_seen for r in bot.received.values()) >= 20 for bot in host.bots()
    ), 8, "each bot to receive 20 stamped frames from the other")
    for bot in host.bots():
        (rec,) = bot.received.values()
        assert rec.publisher in (a.name, b.name) and rec.publisher != bot.participant.name
        assert rec.probe.frames_unreadable == 0
        assert rec.fps is not None and 10 <= rec.fps <= 30
    summary = relay_latency(host.bots())
    p50 = summary["p50_ms"]
    assert isinstance(p50, float) and 0 <= p50 < 200  # in-process: no encoder, no network


def test_removing_a_bot_stops_its_media_and_leaves_the_room(host: BotHost) -> None:
    me = host.add("room-c", "bot")
    wait_for(lambda: me.video_hub.frames_in > 0, 5, "first frame")
    bot = host.bots("room-c")[0]
    assert host.remove(me.id)
    assert host.registry.find(me.id) is None
    assert "room-c" not in host.registry.rooms
    wait_for(lambda: bot.video.readyState == "ended" and bot.audio.readyState == "ended", 3,
             "tracks to stop")
    frames = me.video_hub.frames_in
    time.sleep(0.3)
    assert me.video_hub.frames_in == frames
    assert not host.remove(me.id)


def test_bad_room_name_is_refused(host: BotHost) -> None:
    with pytest.raises(ValidationError):
        host.add("bad room!", "bot")


def test_add_bot_needs_the_plane(loop: asyncio.AbstractEventLoop, redis_conn: redis.Redis) -> None:
    class Rt:
        registry = RoomRegistry(spare_delay_s=0.0, defer=lambda d, fn: None)

    rt = Rt()
    with pytest.raises(NotFound):
        add_bot(rt, "room-d", "bot")
    consumer = start_bot_plane(redis_conn, rt.registry, loop, "node-x")
    try:
        me = add_bot(rt, "room-d", "demo bot")
        assert me.name == "demo bot" and rt.registry.find(me.id) is me
    finally:
        consumer.stop()


def test_control_through_redis(host: BotHost, redis_conn: redis.Redis) -> None:
    control = BotControl(redis_conn)
    with pytest.raises(BackendUnavailable, match="no app process answered"):
        control.add("room-e", "bot", timeout_s=0.3)  # nobody listens yet
    consumer = BotConsumer(redis_conn, host, node="node-1", block_ms=200, claim_delay_s=0.0)
    consumer.start()
    try:
        assert control.wait_listener(3) == ["node-1"]
        reply = control.add("room-e", "bot1")
        assert reply["ok"] and reply["node"] == "node-1" and reply["name"] == "bot1"
        assert host.registry.find(reply["participant_id"]) is not None
        with pytest.raises(ValidationError):
            control.add("bad room!", "bot1")
        assert control.remove("room-e", "bot1")["removed"] == 1
        assert host.bots("room-e") == []
        control.add("room-e", "x")
        control.add("room-e", "y")
        assert control.clear("room-e")["removed"] == 2
    finally:
        consumer.stop()


def test_old_commands_are_not_replayed(host: BotHost, redis_conn: redis.Redis) -> None:
    control = BotControl(redis_conn)
    with pytest.raises(BackendUnavailable):
        control.add("room-f", "stale", timeout_s=0.2)
    consumer = BotConsumer(redis_conn, host, node="node-2", block_ms=200, claim_delay_s=0.0)
    consumer.poll_once(block_ms=200)
    assert host.bots("room-f") == []  # the add sent before this process listened is ignored


def test_stats_report_reception_and_relay_latency(host: BotHost, redis_conn: redis.Redis) -> None:
    consumer = BotConsumer(redis_conn, host, node="node-3", block_ms=200, claim_delay_s=0.0)
    consumer.start()
    try:
        control = BotControl(redis_conn)
        assert control.wait_listener(3)
        control.add("room-g", "a", size=(160, 120), fps=10)
        control.add("room-g", "b", size=(160, 120), fps=10)
        assert host.bots("room-g")[0].video.width == 160
        with pytest.raises(ValidationError, match="fps"):
            control.add("room-g", "c", fps=500)
        time.sleep(2.5)
        stats = control.stats("room-g")
        assert set(stats["bots"]) == {"a", "b"}
        rec = stats["bots"]["a"]["b"]
        assert rec["frames"] >= 10 and sum(rec["per_second"].values()) == rec["frames"]
        assert stats["latency"]["frames_seen"] >= 20 and stats["latency"]["p50_ms"] < 200
    finally:
        consumer.stop()
