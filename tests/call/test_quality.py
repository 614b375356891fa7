"""The quality ladder policy on a fake clock: hysteresis, no flapping, timings, helpers."""

from __future__ import annotations

import fractions
import math
import random
from datetime import timedelta
from typing import TYPE_CHECKING

import av
import pytest
from fakes import EPOCH, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from videochat.call.quality import (
    AUDIO_ONLY,
    AUDIO_RESERVE_KBPS,
    LADDER,
    LOWEST_VIDEO,
    TOP,
    VIDEO_FLOOR_KBPS,
    ConnectionQuality,
    FrameDecimator,
    QualityLevel,
    QualityPolicy,
    QualityThresholds,
    best_fitting,
    connection_quality,
    frame_size_for,
    level_named,
    media_constraints,
    should_send,
    start_level,
    step_down,
    step_up,
    uplink_cap,
    video_bitrate_kbps,
)
from videochat.call.recovery import EventContext
from videochat.events import CallEvent
from videochat.exceptions import ValidationError

if TYPE_CHECKING:
    from videochat.call.supervisor import SubscriberView
    from videochat.media.relay import TrackHub


def run(policy: QualityPolicy, clock: FakeClock, loss_at, until: float, period: float = 0.5,
        start: float = 0.0, rtt: float = 40.0) -> list[tuple[float, QualityLevel]]:
    """Feed a sample every `period` s, each the mean loss over the interval it covers (as an
    RTCP report or a counter delta is); returns (time, new level) for each change."""
    out = []
    n = 0
    while True:
        at = start + n * period
        if at > until + 1e-9:
            return out
        clock.t = at
        loss = sum(loss_at(at - period * (k + 0.5) / 20) for k in range(20)) / 20
        level = policy.observe(loss, rtt, None, at)
        if level is not None:
            out.append((at, level))
        n += 1


# ------------------------------------------------------------------------------------- ladder
def test_ladder_is_ordered_best_first_and_ends_audio_only() -> None:
    assert [q.name for q in LADDER] == ["720p30", "480p30", "360p24", "240p15", "180p10",
                                        "audio-only"]
    for i, (hi, lo) in enumerate(zip(LADDER, LADDER[1:], strict=False)):
        assert hi.rank == i and lo.rank == i + 1
        assert hi.target_kbps > lo.target_kbps and hi.floor_kbps > lo.floor_kbps
        assert lo.floor_kbps < lo.target_kbps
        assert hi.max_fps >= lo.max_fps and hi.max_height > lo.max_height
    assert not AUDIO_ONLY.video and all(q.video for q in LADDER[:-1])
    assert step_down(AUDIO_ONLY) is AUDIO_ONLY and step_up(TOP) is TOP
    assert level_named("360p24") is LADDER[2]
    with pytest.raises(ValidationError):
        level_named("4k")
    assert best_fitting(10_000) is TOP and best_fitting(299) is LADDER[2]
    assert best_fitting(100) is LADDER[3] and best_fitting(50) is LOWEST_VIDEO
    assert best_fitting(49) is AUDIO_ONLY


@pytest.mark.parametrize("kwargs", [
    {"up_loss": 0.1, "down_loss": 0.1}, {"down_loss": 0.5, "severe_loss": 0.4},
    {"up_rtt_ms": 600.0}, {"up_bitrate_headroom": 0.9},
    {"delay_growth_ms": 400.0}, {"delay_rises": 0}, {"delay_window_s": 0.0},
    {"down_after_s": 0.0}, {"up_backoff_factor": 0.5}, {"max_up_after_s": 1.0},
])
def test_thresholds_reject_inconsistent_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        QualityThresholds(**kwargs)


# --------------------------------------------------------------------------- down fast, up slow
@pytest.mark.parametrize("period", [0.5, 1.0])
@pytest.mark.parametrize("onset", [10.0, 10.2, 10.45, 10.9])
def test_thirty_percent_loss_steps_down_within_two_seconds(period: float, onset: float) -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    changes = run(policy, clock, lambda t: 0.30 if t >= onset else 0.0, until=onset + 2.0,
                  period=period)
    assert changes, "no step down within 2 s of 30 % loss"
    at, level = changes[0]
    assert at - onset <= 2.0 and level is LADDER[1]


def test_steps_down_one_rung_at_a_time_and_stops_at_lowest_video_under_moderate_loss() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    changes = run(policy, clock, lambda t: 0.30 if t >= 5 else 0.0, until=60)
    assert [lv for _, lv in changes] == list(LADDER[1:5])
    assert policy.level is LOWEST_VIDEO  # 30 % loss alone never pauses video
    times = [t for t, _ in changes]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    assert times[-1] - 5 <= 6.0  # the floor is reached within a few seconds


def test_severe_loss_pauses_video() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=LADDER[3])
    run(policy, clock, lambda t: 0.6, until=10)
    assert policy.level is AUDIO_ONLY
    assert policy.connection_quality() is ConnectionQuality.POOR


def test_recovers_one_rung_at_a_time_first_within_ten_seconds_top_within_20() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    cleared = 30.0
    changes = run(policy, clock, lambda t: 0.30 if 10 <= t < cleared else 0.0, until=80)
    ups = [(t, lv) for t, lv in changes if t >= cleared]
    assert ups[0][0] - cleared <= 10.0
    assert ups[0][0] - cleared >= 7.0  # slowly: 7 s of good conditions first
    ranks = [LOWEST_VIDEO.rank] + [lv.rank for _, lv in ups]
    assert all(a - b == 1 for a, b in zip(ranks, ranks[1:], strict=False))
    assert ups[-1][1] is TOP and ups[-1][0] - cleared <= 20.0
    assert policy.connection_quality() is ConnectionQuality.EXCELLENT


def test_a_blip_is_ignored_but_a_bad_report_is_not() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    # a bad 0.25 s at 4 Hz, and a bad 0.3 s reported on its own
    assert run(policy, clock, lambda t: 0.5 if 9.75 <= t < 10.0 else 0.0, until=30,
               period=0.25) == []
    assert policy.observe(0.5, 40, None, 30.3, interval_s=0.3) is None
    assert policy.observe(0.0, 40, None, 30.5) is None
    # one report covering a bad 0.6 s is enough
    assert policy.observe(0.3, 40, None, 31.1, interval_s=0.6) is LADDER[1]
    # and so are two bad 0.25 s samples in a row
    run(policy, clock, lambda t: 0.5 if 70 <= t < 70.5 else 0.0, until=75, start=60.25,
        period=0.25)
    assert [(c.direction, c.at) for c in policy.changes if c.at >= 70] == [("down", 70.5)]


def test_neutral_band_holds_the_level_forever() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=LADDER[2])
    assert run(policy, clock, lambda t: 0.05, until=300) == []  # between 2 % and 10 %
    assert policy.connection_quality() is ConnectionQuality.GOOD


@pytest.mark.parametrize("period", [0.5, 0.7, 1.0, 1.3])
def test_fast_oscillating_loss_does_not_flap(period: float) -> None:
    """Loss alternating 2 % / 25 % every 0.5 s (13.5 % on average), sampled at various rates:
    at most the way down to the floor, never back up."""
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    changes = run(policy, clock, lambda t: 0.25 if int(t / 0.5) % 2 else 0.02, until=300,
                  period=period)
    assert len(changes) <= 4
    levels = [TOP] + [lv for _, lv in changes]
    assert all(b.rank > a.rank for a, b in zip(levels, levels[1:], strict=False))


@pytest.mark.parametrize("half", [5.0, 10.0, 15.0])
def test_slow_oscillation_backs_off_failed_probes(half: float) -> None:
    """Good/bad phases of `half` s: the ladder may probe up, but failed probes back off."""
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    changes = run(policy, clock, lambda t: 0.0 if int(t / half) % 2 else 0.30, until=600)
    ups = [t for (t, lv), prev in zip(changes, [TOP] + [lv for _, lv in changes], strict=False)
           if lv.rank < prev.rank]
    assert len(changes) <= 12, changes
    assert len(ups) <= 4
    # the last part of the run is quiet: the policy has learnt not to probe
    assert not [t for t, _ in changes if t > 300]


def test_a_constant_latency_is_not_congestion() -> None:
    """A path that is long from the start, or that jumps once to 650 ms and stays there (a
    longer route, the injector's latency fault), never steps the ladder down nor blocks a
    climb for long: stepping down does not shorten a path."""
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    assert run(policy, clock, lambda t: 0.0, until=30, rtt=650.0) == []
    policy = QualityPolicy(clock, start=TOP)
    run(policy, clock, lambda t: 0.0, until=20, rtt=40.0)
    assert run(policy, clock, lambda t: 0.0, until=60, rtt=650.0, start=20.5) == []
    assert policy.connection_quality() is ConnectionQuality.POOR  # the badge still says so
    # ...and a leg that had stepped down climbs back under it
    low = QualityPolicy(FakeClock(), start=LADDER[3])
    ups = [low.observe(0.0, 40.0 if t < 10 else 650.0 + (t % 3) * 5, None, t / 2)
           for t in range(120)]
    assert [u for u in ups if u] == [LADDER[2], LADDER[1], LADDER[0]]


def test_delay_growth_steps_down_and_a_standing_queue_does_not_block_climbs() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    run(policy, clock, lambda t: 0.0, until=20, rtt=40.0)
    # a queue building at the bottleneck: RTT rising 60 ms a report, no loss yet
    got = [(20.5 + k / 2, policy.observe(0.0, 40.0 + 60 * k, None, 20.5 + k / 2))
           for k in range(1, 12)]
    downs = [(t, lv) for t, lv in got if lv is not None]
    assert downs and downs[0][1] is LADDER[1]
    assert downs[0][0] - 20.5 <= 2.5  # 150 ms over the minimum after three rises
    assert "delay growth" in policy.changes[0].reason
    # the queue drains to a standing 250 ms over the minimum: that does not block climbing
    level = policy.level
    ups = [policy.observe(0.0, 290.0, None, 27 + t / 2) for t in range(40)]
    assert [u for u in ups if u] and policy.level.rank < level.rank


@pytest.mark.parametrize("rtt_at", [
    lambda t: 40 + 30 * math.sin(t * 7),  # jitter
    lambda t: 300 + 25 * ((t * 4) % 3),  # a jittery long path
    lambda t: 40 if (t // 5) % 2 else 400,  # a route flipping every 5 s
])
def test_jitter_and_steps_in_latency_are_not_delay_growth(rtt_at) -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    for k in range(240):
        clock.t = k / 4
        assert policy.observe(0.0, rtt_at(clock.t), None, clock.t) is None


def test_bitrate_jumps_straight_to_the_rung_that_fits_and_blocks_up_steps() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    got = [policy.observe(0.0, 40, 150, t / 2) for t in range(6)]
    assert [g for g in got if g] == [LADDER[3]]  # 240p15's floor fits 150; one change
    # good loss and RTT but no headroom for 360p24 (180 x 1.25): holds
    assert [policy.observe(0.0, 40, 220, 3 + t / 2) for t in range(60)] == [None] * 60
    ups = [policy.observe(0.0, 40, 2000, 33 + t / 2) for t in range(40)]
    assert [u for u in ups if u][0] is LADDER[2]
    clock2 = FakeClock()
    starved = QualityPolicy(clock2, start=LOWEST_VIDEO)
    assert [starved.observe(0.0, 40, 40, t / 2) for t in range(4)][-2:] == [AUDIO_ONLY, None]


def test_video_bitrate_follows_the_rung_and_the_estimate_after_audio() -> None:
    assert video_bitrate_kbps(LADDER[1], None) == 800
    assert video_bitrate_kbps(LADDER[1], 2000) == 800  # the rung caps it
    assert video_bitrate_kbps(LADDER[4], 2000) == 100
    assert video_bitrate_kbps(LADDER[3], 200) == 200 - AUDIO_RESERVE_KBPS  # audio first
    assert video_bitrate_kbps(LADDER[3], 50) == VIDEO_FLOOR_KBPS  # never below the floor
    assert VIDEO_FLOOR_KBPS < 250  # not aiortc's floor


def test_ceiling_caps_start_and_climb() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP, ceiling=LADDER[2])
    assert policy.level is LADDER[2]
    assert run(policy, clock, lambda t: 0.0, until=120) == []


def test_bad_samples_are_tolerated() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    assert policy.observe(float("nan"), float("nan"), float("nan"), 1.0) is None
    assert policy.observe(-0.2, None, None, 1.5) is None and policy.loss == 0.0
    assert policy.observe(0.9, None, None, 1.0) is None  # older than the last: ignored
    assert policy.loss == 0.0
    policy.observe(7.0, None, None, 2.0)
    assert policy.loss is not None and policy.loss <= 1.0


def test_reset_after_rebuild_forgets_history() -> None:
    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP)
    run(policy, clock, lambda t: 0.3, until=5)
    policy.reset(start_level(policy.level, rebuilding=True), at=6.0)
    assert policy.level is LOWEST_VIDEO and policy.loss is None
    assert policy.observe(0.3, None, None, 6.5) is None  # hold time restarts at the reset


def test_changes_are_emitted_as_quality_changed_events() -> None:
    clock = FakeClock()
    events: list[CallEvent] = []
    policy = QualityPolicy(clock, start=TOP, emit=events.append, wall=clock.wall,
                           context=EventContext("room1", participant="bob", leg="sub:alice"))
    changes = run(policy, clock, lambda t: 0.3 if t >= 10 else 0.0, until=11.0)
    assert len(events) == len(changes) == 1
    ev = events[0]
    assert ev.kind == "quality_changed" and ev.room == "room1" and ev.leg == "sub:alice"
    assert ev.at == EPOCH + timedelta(seconds=changes[0][0])
    assert ev.data["from_level"] == "720p30" and ev.data["to_level"] == "480p30"
    assert ev.data["direction"] == "down" and ev.data["loss"] >= 0.1


_PHASE = st.tuples(
    st.floats(0.5, 20.0),  # how long the conditions last
    st.one_of(st.just(0.0), st.floats(0, 0.03), st.floats(0, 1)),  # loss
    st.one_of(st.none(), st.floats(0, 300), st.floats(0, 2000)),  # rtt
    st.one_of(st.none(), st.floats(0, 3000)),  # available bitrate
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PHASE, min_size=1, max_size=30), st.floats(0.2, 1.2), st.integers(0, 2**32))
def test_random_measurements_never_flap(phases: list[tuple[float, float, float | None,
                                                          float | None]],
                                        period: float, seed: int) -> None:
    """Whatever the measurements: >= 1 s between changes, >= 7 s from a down-step to an up-step,
    up-steps one rung at a time, never above the ceiling."""
    rnd = random.Random(seed)
    clock = FakeClock()
    policy = QualityPolicy(clock, start=LADDER[1], ceiling=LADDER[1])
    t = 0.0
    for duration, loss, rtt, bitrate in phases:
        end = t + duration
        while t < end:
            t += period * rnd.uniform(0.7, 1.3)
            jittered = min(1.0, max(0.0, loss + rnd.uniform(-0.02, 0.02)))
            policy.observe(jittered, rtt, bitrate, t)
    prev_at = 0.0
    prev_dir = "down"
    for ch in policy.changes:
        assert ch.at - prev_at >= 1.0 - 1e-9
        if ch.direction == "up":
            assert ch.from_level.rank - ch.to_level.rank == 1
            if prev_dir == "down":
                assert ch.at - prev_at >= QualityThresholds().up_after_s - 1e-9
        assert ch.to_level.rank >= LADDER[1].rank
        prev_at, prev_dir = ch.at, ch.direction


# ---------------------------------------------------------------------------------- the badge
@pytest.mark.parametrize(("loss", "rtt", "level", "flowing", "want"), [
    (0.0, 30.0, TOP, True, ConnectionQuality.EXCELLENT),
    (0.01, 200.0, LADDER[1], True, ConnectionQuality.EXCELLENT),
    (0.05, 30.0, TOP, True, ConnectionQuality.GOOD),
    (0.0, 450.0, TOP, True, ConnectionQuality.GOOD),
    (0.0, 30.0, LADDER[2], True, ConnectionQuality.GOOD),
    (0.15, 30.0, TOP, True, ConnectionQuality.POOR),
    (0.0, 700.0, TOP, True, ConnectionQuality.POOR),
    (0.0, 30.0, LADDER[3], True, ConnectionQuality.POOR),
    (0.0, 30.0, AUDIO_ONLY, True, ConnectionQuality.POOR),
    (0.0, 30.0, TOP, False, ConnectionQuality.LOST),
    (None, None, None, True, ConnectionQuality.EXCELLENT),
])
def test_connection_quality(loss: float | None, rtt: float | None, level: QualityLevel | None,
                            flowing: bool, want: ConnectionQuality) -> None:
    assert connection_quality(loss, rtt, level, flowing=flowing) is want


# ---------------------------------------------------------------------- legs, uplinks, scaling
def test_start_level_and_uplink_cap() -> None:
    assert start_level() is LADDER[1]
    assert start_level(TOP, rebuilding=True) is LADDER[2]
    assert start_level(LADDER[3], rebuilding=True) is LADDER[3]
    assert start_level(AUDIO_ONLY, rebuilding=True) is LOWEST_VIDEO
    assert start_level(None, rebuilding=True) is LADDER[2]
    assert uplink_cap() is LADDER[1] and uplink_cap(TOP) is LADDER[1]
    assert uplink_cap(LADDER[4]) is LADDER[2]
    c = media_constraints(LADDER[2])
    assert c["video"]["width"]["max"] == 640 and c["video"]["frameRate"]["max"] == 24
    assert media_constraints(AUDIO_ONLY) == {"audio": True, "video": False}


@pytest.mark.parametrize(("level", "src", "want"), [
    (TOP, (640, 480), (640, 480)),
    (LADDER[1], (640, 480), (640, 480)),
    (LADDER[2], (640, 480), (480, 360)),
    (LADDER[3], (640, 480), (320, 240)),
    (LADDER[4], (640, 480), (240, 180)),
    (TOP, (1920, 1080), (1280, 720)),
    (LADDER[2], (1280, 720), (640, 360)),
    (LADDER[2], (720, 1280), (360, 640)),  # portrait keeps its orientation
    (TOP, (641, 481), (640, 480)),  # odd sizes become even
])
def test_frame_size_for(level: QualityLevel, src: tuple[int, int], want: tuple[int, int]) -> None:
    assert frame_size_for(level, *src) == want


def test_frame_size_for_rejects_audio_only_and_tiny_frames() -> None:
    with pytest.raises(ValidationError):
        frame_size_for(AUDIO_ONLY, 640, 480)
    with pytest.raises(ValidationError):
        frame_size_for(TOP, 1, 480)


@settings(deadline=None)
@given(st.sampled_from(LADDER[:-1]), st.integers(2, 4000), st.integers(2, 4000))
def test_frame_size_properties(level: QualityLevel, w: int, h: int) -> None:
    ow, oh = frame_size_for(level, w, h)
    assert ow % 2 == 0 and oh % 2 == 0 and ow >= 2 and oh >= 2
    assert ow <= max(w, 2) and oh <= max(h, 2)  # never upscales (beyond the 2 px minimum)
    long_side, short_side = max(ow, oh), min(ow, oh)
    assert long_side <= max(level.max_width, 2) and short_side <= max(level.max_height, 2)
    if min(ow, oh) >= 40:
        assert math.isclose(ow / oh, w / h, rel_tol=0.06)


@pytest.mark.parametrize(("level", "src_fps", "want"), [
    (LADDER[3], 30, 15), (LADDER[4], 20, 10), (LADDER[2], 30, 24), (TOP, 20, 20),
    (LADDER[2], 20, 20), (AUDIO_ONLY, 30, 0),
])
def test_should_send_by_index(level: QualityLevel, src_fps: int, want: int) -> None:
    assert sum(should_send(level, i, src_fps) for i in range(src_fps * 10)) == want * 10


@settings(deadline=None)
@given(st.sampled_from(LADDER[:-1]), st.floats(1.0, 60.0), st.integers(30, 600))
def test_should_send_keeps_the_rate(level: QualityLevel, src_fps: float, n: int) -> None:
    sent = sum(should_send(level, i, src_fps) for i in range(n))
    expected = n * min(1.0, level.max_fps / src_fps)
    assert abs(sent - expected) <= 1.5


@settings(deadline=None)
@given(st.sampled_from(LADDER[:-1]), st.floats(5.0, 60.0), st.floats(0.0, 0.3),
       st.integers(0, 2**32))
def test_frame_decimator_caps_the_rate_with_jitter(level: QualityLevel, src_fps: float,
                                                   jitter: float, seed: int) -> None:
    rnd = random.Random(seed)
    dec = FrameDecimator(level)
    interval = 1 / src_fps
    times = [i * interval + rnd.uniform(0, jitter * interval) for i in range(int(src_fps * 10))]
    sent = sum(dec.should_send(t) for t in sorted(times))
    cap = level.max_fps * 10
    assert sent <= cap + 1
    assert sent >= 0.8 * min(cap, len(times))


def test_frame_decimator_follows_level_changes() -> None:
    dec = FrameDecimator(LADDER[1])
    ts = [i / 30 for i in range(300)]
    assert sum(dec.should_send(t) for t in ts[:30]) == 30
    dec.set_level(LADDER[4])
    assert 9 <= sum(dec.should_send(t) for t in ts[30:60]) <= 11
    dec.set_level(AUDIO_ONLY)
    assert not any(dec.should_send(t) for t in ts[60:90])
    dec.set_level(LADDER[3])
    assert 14 <= sum(dec.should_send(t) for t in ts[90:120]) <= 16


# ------------------------------------------------------------------- real aiortc, on loopback
def test_policy_fed_real_receiver_reports_under_thirty_percent_loss(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real aiortc sender (the server's subscribe leg) and receiver (the browser) on
    127.0.0.1; 30 % of the sender's packets are dropped above ICE. Fed each fresh receiver
    report (remote-inbound-rtp, as the server sees it), the ladder steps down with the first
    report that shows the loss (so within ~2 s of the onset: reports come every 0.5-1.5 s) and
    takes its first step back up within 10 s after the loss is cleared."""
    import asyncio
    import time

    import aioice
    import aioice.ice
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import MediaStreamError

    from videochat.media.bot_tracks import BotVideoTrack

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    rng = random.Random(6)
    drop = {"p": 0.0}
    lossy: set[int] = set()
    orig_send = aioice.Connection.send

    async def send(self: aioice.Connection, data: bytes) -> None:
        if id(self) in lossy and rng.random() < drop["p"]:
            return
        await orig_send(self, data)

    monkeypatch.setattr(aioice.Connection, "send", send)
    policy = QualityPolicy(time.monotonic, start=TOP)

    async def run() -> tuple[float, float]:
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tasks: list[asyncio.Task[None]] = []

        async def consume(track: MediaStreamTrack) -> None:
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return

        receiver.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
        sender.addTrack(BotVideoTrack(320, 240, fps=20))
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        for transceiver in sender.getTransceivers():
            lossy.add(id(transceiver.sender.transport.transport._connection))
        seen: set[object] = set()
        reports: list[tuple[float, float]] = []  # (arrival, loss fraction)

        async def feed_until(done, limit: float) -> float:
            """Feed each fresh receiver report; returns when done() or after `limit` s."""
            end = time.monotonic() + limit
            while time.monotonic() < end:
                for s in (await sender.getStats()).values():
                    if s.type == "remote-inbound-rtp" and s.timestamp not in seen:
                        seen.add(s.timestamp)  # the report's arrival: a fresh one
                        rtt = None if s.roundTripTime is None else s.roundTripTime * 1000
                        reports.append((time.monotonic(), s.fractionLost / 256))  # 1/256ths
                        policy.observe(reports[-1][1], rtt)
                if done():
                    return time.monotonic()
                await asyncio.sleep(0.05)
            return time.monotonic()

        try:
            await feed_until(lambda: len(seen) >= 2, 15)
            assert len(seen) >= 2, "no receiver reports"
            drop["p"] = 0.30
            onset = time.monotonic()
            stepped = await feed_until(lambda: bool(policy.changes), 4)
            assert policy.changes, "no step down under 30 % loss"
            first_bad = next(at for at, loss in reports if at > onset and loss >= 0.10)
            assert policy.changes[0].at == pytest.approx(first_bad, abs=0.01)  # no added delay
            await feed_until(lambda: False, 1.0)
            drop["p"] = 0.0
            cleared = time.monotonic()
            up = await feed_until(lambda: policy.changes[-1].direction == "up", 12)
            assert policy.changes[-1].direction == "up", [(c.at, c.reason) for c in
                                                          policy.changes]
            return stepped - onset, up - cleared
        finally:
            await sender.close()
            await receiver.close()
            for task in tasks:
                task.cancel()

    down_s, up_s = asyncio.run(run())
    assert down_s <= 2.5  # 2 s target; the report schedule alone can take ~2 s (see above)
    assert up_s <= 10.0
    first = policy.changes[0]
    assert first.direction == "down" and first.reason.startswith("loss")
    ups = [c for c in policy.changes if c.direction == "up"]
    assert len(ups) == 1 and ups[0].from_level.rank - ups[0].to_level.rank == 1


# --------------------------------------------------- the supervisor's view of one subscriber
def _sample(clock: FakeClock, kind: str, loss: float, rtt: float = 40.0):
    from videochat.metrics.stats import MetricSample

    return MetricSample(at=clock.wall(), room="r", call_id=None, participant="bob", leg="leg1",
                        direction="subscribe", kind=kind, loss_fraction=loss, rtt_ms=rtt)


def _subscriber_view(clock: FakeClock) -> SubscriberView:
    """Bob's view of ana in room r, as the supervisor makes it (no faults, no events)."""
    from videochat.call.supervisor import SubscriberView
    from videochat.media.participant import Slot

    return SubscriberView(Slot.create("owner0000000", 0), "r", "ana", emit=None, faults=None,
                          clock=clock, context=EventContext("r", "bob"))


def test_subscriber_view_steps_down_on_the_reports_themselves_not_the_late_samples() -> None:
    clock = FakeClock()
    view = _subscriber_view(clock)
    view.observe(_sample(clock, "video", 0.0))  # before any report: samples drive the ladder
    for _ in range(20):  # clean reports, one a second (the ladder climbs to the top)
        clock.t += 1.0
        view.on_report("video", 0.0)
    start = view.policy.level
    onset = clock.t
    while view.policy.level is start and clock.t < onset + 5:
        clock.t += 0.15  # under loss Chromium's NACKs come in compound packets with a report
        view.on_report("video", 0.3)
        # a sample a second late still says "clean" and must not reset the evidence
        view.observe(_sample(clock, "video", 0.0))
        view.on_report("audio", 0.0)  # the audio stream's reports do not drive video
    assert view.policy.level.rank == start.rank + 1
    assert clock.t - onset <= 0.75


def test_subscriber_view_samples_drive_until_reports_arrive() -> None:
    clock = FakeClock()
    view = _subscriber_view(clock)
    start = view.policy.level
    for _ in range(4):
        clock.t += 1.0
        view.observe(_sample(clock, "video", 0.3))
    assert view.policy.level.rank > start.rank


def test_loss_window_reads_the_counters_not_each_blocks_own_fraction() -> None:
    from videochat.call.rtcp import LossWindow

    window = LossWindow(0.5)
    rng = random.Random(3)
    seq = lost = 0
    got: list[float] = []
    own: list[float] = []
    for i in range(200):  # a block every 50 ms, as reports riding on NACKs come
        sent = rng.randint(1, 4)
        dropped = sum(rng.random() < 0.3 for _ in range(sent))
        seq += sent
        lost += dropped
        fraction = dropped / sent  # that block's own fraction: 0 % .. 100 %
        own.append(fraction)
        got.append(window.add(i * 0.05, seq, lost, fraction))
    steady = got[20:]
    assert sum(x == 0 for x in own) > 0.2 * len(own)  # a third of the blocks say "no loss"
    assert sum(x <= 0.1 for x in steady) < 0.05 * len(steady)  # the window hardly ever does
    assert abs(sum(steady) / len(steady) - 0.3) < 0.05
    assert window.add(10.5, 5, lost, 0.0) == 0.0  # counters went back: a new stream
    assert window.add(10.55, 10, lost + 1, 0.25) == 0.2  # 1 lost of the 5 expected since


def test_reports_bunched_after_losses_do_not_pause_video_at_thirty_percent() -> None:
    # A receiver reports right after it notices a loss (the report rides on the NACK), so
    # lossy reports come close together and clean stretches in long ones. Counted per
    # report that read as 42 % and paused video; per second of media it is 32 %.
    clock = FakeClock()
    policy = QualityPolicy(clock, start=LOWEST_VIDEO)
    for _ in range(10):
        clock.t += 0.8
        policy.observe(0.25, 40.0, at=clock.t, interval_s=0.8)
        clock.t += 0.2
        policy.observe(0.60, 40.0, at=clock.t, interval_s=0.2)
    assert policy.level is LOWEST_VIDEO
    for _ in range(4):  # really severe loss still pauses it
        clock.t += 0.5
        policy.observe(0.6, 40.0, at=clock.t, interval_s=0.5)
    assert policy.level is AUDIO_ONLY


def test_loss_window_spans_enough_packets_at_low_frame_rates() -> None:
    from videochat.call.rtcp import LossWindow

    window = LossWindow(0.5, min_packets=40, max_window_s=2.0)
    seq = lost = 0
    for i in range(40):  # 20 packets a second (180p10), a report every 0.1 s
        seq += 2
        lost += 1 if i % 10 == 9 else 0  # 1 in 20 lost: 5 %
        got = window.add(i * 0.1, seq, lost, 0.0)
    # half a second holds 10 packets (one loss = 10 %, or 0 %); 2 s hold the 40 needed
    assert got == pytest.approx(0.05, abs=0.011)


def test_only_the_audio_stream_confirms_loss_severe_enough_to_pause_video() -> None:
    clock = FakeClock()
    view = _subscriber_view(clock)
    view.policy = QualityPolicy(clock, start=LOWEST_VIDEO)
    view.on_report("audio", 0.60)
    clock.t += 5.0
    view.on_report("audio", 0.30)  # 250 packets over 5 s: 30 %
    for _ in range(30):  # 10 packets a second of video: its window reads 50-60 %
        clock.t += 0.2
        view.on_report("video", 0.55)
    assert view.policy.level is LOWEST_VIDEO
    view.on_report("audio", 0.55)  # the audio stream agrees: it is severe
    for _ in range(20):
        clock.t += 0.2
        view.on_report("video", 0.55)
    assert view.policy.level is AUDIO_ONLY


def test_pausing_needs_an_audio_report_from_after_the_last_step() -> None:
    clock = FakeClock(100.0)
    view = _subscriber_view(clock)
    view.on_report("audio", 0.9)
    clock.t += 2.0
    view.policy = QualityPolicy(clock, start=LOWEST_VIDEO)  # it got there at 102 s
    clock.t += 2.0
    view.on_report("audio", 0.6)  # spans 100-104 s: partly before the step, at the old rung
    for _ in range(10):
        clock.t += 0.2
        view.on_report("video", 0.55)
    assert view.policy.level is LOWEST_VIDEO
    clock.t += 3.0
    view.on_report("audio", 0.6)  # all of it at the lowest rung: still severe
    for _ in range(5):
        clock.t += 0.2
        view.on_report("video", 0.55)
    assert view.policy.level is AUDIO_ONLY


def test_subscriber_view_takes_the_round_trip_time_of_each_report() -> None:
    clock = FakeClock()
    view = _subscriber_view(clock)
    start = view.policy.level
    view.on_report("video", 0.0, 3.0)
    for k in range(1, 6):
        clock.t += 0.25
        view.on_report("video", 0.0, 3.0 + 180 * k)  # a queue growing, seen by each report
        view.observe(_sample(clock, "video", 0.0, rtt=90.0))  # aiortc's smoothed, stale RTT
    assert view.policy.level.rank == start.rank + 1


def test_subscriber_view_feeds_the_receivers_estimate_and_tells_the_encoder_its_rung() -> None:
    from videochat.call.supervisor import SubscriberView
    from videochat.compat.encoders import RungVp8Encoder
    from videochat.media.participant import Slot

    clock = FakeClock()
    view = SubscriberView(Slot.create("owner0000000", 0), "r", "ana", emit=None, faults=None,
                          clock=clock, context=EventContext("r", "bob"),
                          ladder_reads_estimate=True)
    encoder = RungVp8Encoder(800_000, start_bps=300_000, clock=clock)
    view.attach_encoder(encoder)
    assert encoder.cap_bps == view.policy.level.target_kbps * 1000
    view.on_estimate("audio", 5.0)  # Chrome names every stream in one REMB: video's counts
    assert view.estimate_kbps is None
    view.on_report("video", 0.0, 20.0)
    for _ in range(8):
        clock.t += 0.5
        view.on_estimate("video", 150.0)  # a 200 kbps downlink
        view.on_report("video", 0.0, 20.0)
    assert view.policy.level is LADDER[3]  # 240p15: its floor (90) fits 150, 360p's does not
    assert view.estimate_kbps == 150.0 and view.video_kbps == 150 - AUDIO_RESERVE_KBPS
    frame = av.VideoFrame(640, 480, "yuv420p")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90_000)
    view.transform(frame)  # the next frame tells the encoder
    assert encoder.cap_bps == LADDER[3].target_kbps * 1000
    clock.t += 10
    assert view.estimate_kbps is None  # stale


# ------------------------------------------- forwarding the publisher's stream, or transcoding
def test_a_step_between_rungs_that_send_the_same_stream_needs_no_headroom() -> None:
    # 480p30 and 720p30 both forward a 640x480 camera as it is: nothing changes on the wire,
    # so an estimate of 450 kbps (720p30 would want 1.25 x 500) must not hold the step.
    forwarding = {"720p30", "480p30"}

    def same(a: QualityLevel, b: QualityLevel) -> bool:
        return a.name in forwarding and b.name in forwarding

    for predicate, climbs in ((same, True), (None, False)):
        clock = FakeClock()
        policy = QualityPolicy(clock, start=LADDER[1], same_stream=predicate)
        got = [policy.observe(0.0, 40, 450, t / 2) for t in range(40)]
        assert (TOP in got) is climbs
    # ...while a step onto a rung that changes the stream still needs it.
    clock = FakeClock()
    policy = QualityPolicy(clock, start=LADDER[3], same_stream=same)
    assert [policy.observe(0.0, 40, 200, t / 2) for t in range(40)] == [None] * 40


def test_the_supervisors_view_tells_the_ladder_which_rungs_send_the_same_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    view, hub = _view_on_a_camera(monkeypatch, clock, LADDER[1])
    assert view.same_stream(LADDER[0], LADDER[1])  # both fit a 640x480, 30 fps camera
    assert not view.same_stream(LADDER[1], LADDER[2])  # 360p24 scales and decimates
    view.on_estimate("video", 450.0)
    for t in range(40):  # clean reports: 480p30 -> 720p30 with no estimate headroom
        clock.t = t / 2
        view.on_report("video", 0.0, 40.0)
    assert view.policy.level is TOP
    hub.size = (1280, 720)  # a camera that 480p30 must scale: then the step changes it
    assert not view.same_stream(LADDER[0], LADDER[1])


def _view_on_a_camera(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, start: QualityLevel,
                      kbps: float | None = 300.0) -> tuple[SubscriberView, TrackHub]:
    """A subscriber view whose slot is bound to a forwardable 640x480, 30 fps publisher sending
    `kbps`, consulted by its relay track as in the supervisor (`route = view.delivery`)."""
    from videochat.call.supervisor import SubscriberView
    from videochat.compat import aiortc as compat
    from videochat.media.participant import Slot
    from videochat.media.relay import TrackHub

    monkeypatch.setattr(compat, "request_keyframe", lambda receiver: True)
    hub = TrackHub("video", "ana")
    hub._receiver = object()  # as if tapped on a browser publisher's receiver
    hub.size, hub.fps, hub.kbps = (640, 480), 30.0, kbps
    slot = Slot.create("owner0000000", 0)
    view = SubscriberView(slot, "r", "ana", emit=None, faults=None, clock=clock,
                          context=EventContext("r", "bob"))
    view.policy.level = start  # where the ladder has the leg now
    slot.video.route = view.delivery
    slot.video.bind(hub)
    return view, hub


def _climb(view: SubscriberView, level: QualityLevel) -> str:
    """The ladder moved the leg to `level`; the relay consults the route at its next frame."""
    view.policy.level = level
    view.slot.video._update_delivery()
    return str(view.slot.video.delivery)


def test_a_transcoded_leg_is_not_forwarded_a_stream_its_estimate_cannot_carry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    view, _hub = _view_on_a_camera(monkeypatch, clock, LADDER[2])
    assert view.slot.video.delivery == "transcoded"  # 360p24 scales the 640x480 frames
    view.on_estimate("video", 200.0)  # a 200 kbps downlink; the publisher sends 300
    assert _climb(view, LADDER[1]) == "transcoded"  # 480p30 would forward: not through this
    assert view.forwardable()
    view.on_estimate("video", 400.0)  # >= 1.25 x 300: the stream fits with room
    view.slot.video._update_delivery()
    assert view.slot.video.delivery == "forwarded"


def test_once_forwarded_a_leg_stays_forwarded_until_its_rung_transcodes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    view, hub = _view_on_a_camera(monkeypatch, clock, LADDER[2])
    view.on_estimate("video", 200.0)
    assert _climb(view, LADDER[1]) == "transcoded"
    view.on_estimate("video", 400.0)
    assert _climb(view, LADDER[1]) == "forwarded"
    for noisy in (320.0, 250.0, 360.0, 290.0):  # REMB swings: no switch back and forth
        clock.t += 0.5
        view.on_estimate("video", noisy)
        assert _climb(view, LADDER[1]) == "forwarded"
    assert _climb(view, LADDER[0]) == "forwarded"  # same stream, same delivery
    hub.kbps = 600.0  # the publisher's rate rose: still no flapping
    assert _climb(view, LADDER[0]) == "forwarded"
    assert _climb(view, LADDER[2]) == "transcoded"  # the ladder's step down moves it off
    assert _climb(view, LADDER[1]) == "transcoded"  # ...and back up needs the room again


def test_without_an_estimate_or_a_measured_stream_a_leg_forwards_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    view, hub = _view_on_a_camera(monkeypatch, clock, LADDER[2])
    view.on_estimate("video", 200.0)
    assert _climb(view, LADDER[1]) == "transcoded"
    hub.kbps = None  # e.g. a publisher just rebuilt: its stream not measured yet
    assert _climb(view, LADDER[1]) == "forwarded"
    view2, _ = _view_on_a_camera(monkeypatch, clock, LADDER[2])
    view2.on_estimate("video", 200.0)
    assert _climb(view2, LADDER[1]) == "transcoded"
    clock.t += 6.0  # the estimate went stale: no estimate at all
    assert view2.estimate_kbps is None
    assert _climb(view2, LADDER[1]) == "forwarded"
    # A fresh join: no estimate yet, so the first frame comes straight from the publisher.
    view3, _ = _view_on_a_camera(monkeypatch, FakeClock(), LADDER[1])
    assert view3.slot.video.delivery == "forwarded"


def test_the_ladder_does_not_act_on_the_estimate_unless_told_to() -> None:
    # supervisor.LADDER_READS_ESTIMATE: Chromium's REMB started healthy calls at 240p15 and
    # kept video paused after a cap; the estimate decides forwarding, not the rung.
    clock = FakeClock()
    view = _subscriber_view(clock)
    start = view.policy.level
    view.on_report("video", 0.0, 20.0)
    for _ in range(8):
        clock.t += 0.5
        view.on_estimate("video", 150.0)
        view.on_report("video", 0.0, 20.0)
    assert view.estimate_kbps == 150.0 and view.policy.level is start


def test_a_step_down_passes_over_rungs_that_send_the_same_stream() -> None:
    # A 480x360 camera is forwarded as it is at 720p30, 480p30 and 360p24: under loss, only
    # 240p15 changes what goes on the wire, so that is the first step, not the third.
    forwarding = {"720p30", "480p30", "360p24"}

    def same(a: QualityLevel, b: QualityLevel) -> bool:
        return a.name in forwarding and b.name in forwarding

    clock = FakeClock()
    policy = QualityPolicy(clock, start=TOP, same_stream=same)
    got = [policy.observe(0.3, 40, None, 2 + t / 4) for t in range(5)]  # one step's worth
    assert [g for g in got if g] == [LADDER[3]]
    assert policy.changes[0].from_level is TOP
    # A small camera forwarded as it is at every rung: no step changes the stream, so one
    # step, as without the predicate (not down to the lowest rung, to be transcoded there
    # once the camera grows again).
    clock2 = FakeClock()
    everything = QualityPolicy(clock2, start=TOP, same_stream=lambda a, b: a.video and b.video)
    got = [everything.observe(0.3, 40, None, 2 + t / 4) for t in range(5)]
    assert [g for g in got if g] == [LADDER[1]]
