"""Faults on real packets: two aiortc peer connections in one process, on loopback.

The "browser" peer connection publishes a noise video (so the encoder really uses its bitrate)
to the "server" one, which sends another noise video back. The server's connection is the media
leg registered with the FaultManager; every effect is read from aiortc's own getStats() or from
decoded frames, never from the injector's counters alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aioice.ice
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    VideoStreamTrack,
)
from aiortc.stats import RTCStatsReport

from videochat.call.rtcp import watch_receiver_reports
from videochat.events import CallEvent, EventBus
from videochat.faults.injector import FaultManager, LinkPolicy, VideoEffectFilter
from videochat.faults.model import parse_fault

W, H = 320, 240


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # aioice leaves 127.0.0.1 out of host candidates; tests must stay on loopback.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])

    # aiortc files the RTX stream's inbound-rtp under the media stream's id, hiding it; keep
    # both so the media SSRC's own packetsLost/packetsReceived can be read.
    def add(self: RTCStatsReport, entry: Any) -> None:
        key = entry.id
        if entry.type == "inbound-rtp":
            key = f"{entry.id}_{entry.ssrc}"
        self[key] = entry

    monkeypatch.setattr(RTCStatsReport, "add", add)
    yield


class NoiseTrack(VideoStreamTrack):
    """Noisy pixels: VP8 cannot compress them away, so bitrate and packet counts are real."""

    def __init__(self) -> None:
        super().__init__()
        self._rng = np.random.default_rng(1)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        # Low-amplitude noise: VP8 spends about its 500 kbps target on it (full noise: 6 Mbps).
        img = (120 + self._rng.integers(0, 16, (H * 3 // 2, W))).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class MovingBarTrack(VideoStreamTrack):
    """Grey frames with a white bar that moves 8 px per frame: motion is easy to see decoded."""

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((H * 3 // 2, W), 128, dtype=np.uint8)
        img[:H] = 100
        x = (self._n * 8) % (W - 16)
        img[:H, x:x + 16] = 235
        self._n += 1
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        return frame


def bar_position(luma: np.ndarray) -> int:
    return int(np.argmax(luma.mean(axis=0)))


class FilteredTrack(MediaStreamTrack):
    """What the relay does: every forwarded frame goes through the fault's video filter."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, flt: VideoEffectFilter) -> None:
        super().__init__()
        self.source = source
        self.flt = flt

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.recv()
        assert isinstance(frame, av.VideoFrame)
        return self.flt.apply(frame)


@dataclass
class Leg:
    room: str
    participant: str
    participant_id: str
    direction: Literal["publish", "subscribe"]
    pc: RTCPeerConnection
    closed: int = 0

    def close(self) -> None:
        self.closed += 1


@dataclass
class Sink:
    """Consumes a received track, keeping the last decoded frames."""

    frames: int = 0
    last: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    async def run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # noqa: BLE001 - MediaStreamError when the call ends
                return
            assert isinstance(frame, av.VideoFrame)
            self.frames += 1
            self.times.append(time.monotonic())
            self.last.append(frame.to_ndarray(format="yuv420p")[:H])
            del self.last[:-5]


class Call:
    """A two-peer call on one loop: `browser` publishes to `server`, `server` sends back."""

    def __init__(self, server_track: MediaStreamTrack | None = None) -> None:
        config = RTCConfiguration(iceServers=[])
        self.browser = RTCPeerConnection(config)
        self.server = RTCPeerConnection(config)
        self.server_track = server_track or NoiseTrack()
        self.at_server = Sink()
        self.at_browser = Sink()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Call:
        self.browser.addTrack(NoiseTrack())

        @self.server.on("track")
        def on_server_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self.at_server.run(track)))

        @self.browser.on("track")
        def on_browser_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self.at_browser.run(track)))

        await self.browser.setLocalDescription(await self.browser.createOffer())
        await self.server.setRemoteDescription(self.browser.localDescription)
        self.server.addTrack(self.server_track)
        await self.server.setLocalDescription(await self.server.createAnswer())
        await self.browser.setRemoteDescription(self.server.localDescription)
        await wait_for(lambda: self.at_server.frames > 10 and self.at_browser.frames > 10, 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.browser.close()
        await self.server.close()
        for task in self._tasks:
            task.cancel()

    def leg(self, room: str = "r1", name: str = "alice") -> Leg:
        return Leg(room, name, "p-" + name, "publish", self.server)


async def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


async def stats(pc: RTCPeerConnection) -> dict[str, dict[str, Any]]:
    """getStats() as {type: entry} for the single video stream of a call.

    Of the inbound-rtp entries the media SSRC's is kept (the RTX stream carries far fewer).
    """
    report = await pc.getStats()
    out: dict[str, dict[str, Any]] = {}
    for entry in report.values():
        row = dict(vars(entry))
        if entry.type == "inbound-rtp" and "inbound-rtp" in out:
            old = out["inbound-rtp"]
            if old["packetsReceived"] + old["packetsLost"] >= (
                    row["packetsReceived"] + row["packetsLost"]):
                continue
        out[entry.type] = row
    return out


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --- pure policy ---------------------------------------------------------------------------

def test_policy_combines_faults() -> None:
    faults = [
        parse_fault({"kind": "loss", "room": "r", "percent": 50}),
        parse_fault({"kind": "loss", "room": "r", "percent": 50}),
        parse_fault({"kind": "latency", "room": "r", "ms": 100, "jitter_ms": 10}),
        parse_fault({"kind": "latency", "room": "r", "ms": 50}),
        parse_fault({"kind": "bandwidth", "room": "r", "kbps": 500}),
        parse_fault({"kind": "bandwidth", "room": "r", "kbps": 300}),
    ]
    p = LinkPolicy.combine(faults)
    assert p.loss == pytest.approx(0.75)
    assert p.latency_s == pytest.approx(0.15)
    assert p.jitter_s == pytest.approx(0.01)
    assert p.rate_bps == 300_000
    assert not p.blackout and not p.idle
    assert LinkPolicy.combine([]).idle


def test_unregistered_legs_are_released_and_new_legs_get_active_faults() -> None:
    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop())
            manager.apply(parse_fault({"kind": "blackout", "room": "r1", "participant": "alice"}))
            undo = manager.register_leg(call.leg())  # registered mid-fault: gets it at once
            await asyncio.sleep(0.3)
            stalled = call.at_server.frames
            await asyncio.sleep(0.5)
            assert call.at_server.frames == stalled
            undo()  # e.g. replaced by a rebuilt leg: the fault must not stick to it
            await wait_for(lambda: call.at_server.frames > stalled + 5, 5)
            assert len(manager.active()) == 1

    run(main())


def _loss_fraction(before: dict[str, Any], after: dict[str, Any]) -> float:
    lost = after["packetsLost"] - before["packetsLost"]
    got = after["packetsReceived"] - before["packetsReceived"]
    return float(lost / (lost + got))


# --- loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["up", "down"])
def test_loss_20_percent_is_measured_by_the_receiver(direction: str) -> None:
    async def main() -> None:
        async with Call() as call:
            events: list[CallEvent] = []
            bus = EventBus()
            bus.add_sink(events.append)
            manager = FaultManager(asyncio.get_running_loop(), bus, seed=7)
            manager.register_leg(call.leg())
            # "up" is what alice sends: the server is the receiver; "down" the browser is.
            receiver = call.server if direction == "up" else call.browser
            await asyncio.sleep(1.0)
            base = (await stats(receiver))["inbound-rtp"]
            manager.apply(parse_fault({"kind": "loss", "room": "r1", "participant": "alice",
                                       "percent": 20, "direction": direction,
                                       "duration_s": 30}))
            await asyncio.sleep(6.0)
            during = (await stats(receiver))["inbound-rtp"]
            measured = _loss_fraction(base, during)
            assert 0.15 <= measured <= 0.25, measured
            assert [e.kind for e in events] == ["fault_started"]
            manager.clear()
            await asyncio.sleep(0.5)
            after_clear = (await stats(receiver))["inbound-rtp"]
            await asyncio.sleep(3.0)
            end = (await stats(receiver))["inbound-rtp"]
            assert _loss_fraction(after_clear, end) < 0.03
            assert [e.kind for e in events] == ["fault_started", "fault_ended"]
            assert events[1].data["reason"] == "cleared"

    run(main())


def test_receiver_reports_reach_the_ladder_as_they_arrive() -> None:
    # videochat.call.rtcp: each report block about the server's stream, at once, with its loss and
    # its own (unsmoothed) round-trip time.
    async def main() -> None:
        async with Call() as call:
            reports: list[tuple[float, str, float, float | None]] = []
            hooked = watch_receiver_reports(call.server, lambda kind, loss, rtt: reports.append(
                (time.monotonic(), kind, loss, rtt)))
            assert hooked == 1
            assert watch_receiver_reports(call.server, lambda k, f, r: None) == 0  # hooked once
            await wait_for(lambda: sum(r[3] is not None for r in reports) >= 2, 8)
            assert all(kind == "video" and loss == 0.0 for _, kind, loss, _ in reports)
            assert all(rtt < 100 for *_, rtt in reports if rtt is not None)  # loopback
            manager = FaultManager(asyncio.get_running_loop(), seed=7)
            manager.register_leg(call.leg())
            manager.apply(parse_fault({"kind": "loss", "room": "r1", "participant": "alice",
                                       "percent": 30, "direction": "down"}))
            start = time.monotonic()
            await wait_for(lambda: any(t > start and loss > 0.1 for t, _, loss, _ in reports), 5)
            await asyncio.sleep(3.0)
            lossy = [loss for t, _, loss, _ in reports if t > start + 1.6]
            assert lossy and 0.15 <= sum(lossy) / len(lossy) <= 0.45, lossy
            # aiortc's own handling still ran: its stats hold the same report
            assert (await stats(call.server))["remote-inbound-rtp"]["fractionLost"] > 0
            manager.clear()
            manager.apply(parse_fault({"kind": "latency", "room": "r1", "participant": "alice",
                                       "ms": 300, "direction": "down"}))
            start = time.monotonic()
            await wait_for(lambda: any(t > start and rtt is not None and rtt >= 280
                                       for t, _, _, rtt in reports), 6)

    run(main())


# --- latency -------------------------------------------------------------------------------

async def _fresh_rtt(pc: RTCPeerConnection, seconds: float, stale: float | None) -> float:
    """The smallest RTT computed from a new receiver report within `seconds`.

    aiortc keeps the last value until a report answers its latest sender report, so a repeated
    value is stale. The smallest fresh one, like ping's min, leaves out the scheduling stalls of
    a loaded machine, which only ever add delay.
    """
    seen = {stale}
    fresh: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or not fresh:
        if time.monotonic() > deadline + 10:
            raise AssertionError("no fresh receiver report")
        await asyncio.sleep(0.2)
        rtt = (await stats(pc)).get("remote-inbound-rtp", {}).get("roundTripTime")
        if rtt is not None and rtt not in seen:
            seen.add(rtt)
            fresh.append(float(rtt))
    return min(fresh)


async def _last_rtt(pc: RTCPeerConnection) -> float | None:
    rtt = (await stats(pc)).get("remote-inbound-rtp", {}).get("roundTripTime")
    return None if rtt is None else float(rtt)


@pytest.mark.parametrize(("direction", "added"), [("down", 0.2), ("both", 0.4)])
def test_latency_raises_round_trip_time(
    direction: str, added: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiortc smooths RTT over reports (alpha 0.85, one report a second): read each raw value.
    monkeypatch.setattr(aiortc.rtcrtpsender, "RTT_ALPHA", 0.0)

    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop(), seed=1)
            base = await _fresh_rtt(call.server, 3.0, None)
            assert base < 0.1
            # The fault exists before the leg registers, as for a leg rebuilt mid-fault.
            manager.apply(parse_fault({"kind": "latency", "room": "r1", "ms": 200,
                                       "direction": direction}))
            manager.register_leg(call.leg())
            await asyncio.sleep(1.5)  # reports about packets sent before the fault
            rtt = await _fresh_rtt(call.server, 5.0, await _last_rtt(call.server))
            # Delay can only be added by a busy machine, never taken away: a tighter floor.
            assert added - 0.03 <= rtt - base <= added + 0.08, (base, rtt)
            manager.clear()
            await asyncio.sleep(1.5)
            after = await _fresh_rtt(call.server, 2.5, await _last_rtt(call.server))
            assert after < base + 0.05

    run(main())


def test_jitter_spreads_arrival_times() -> None:
    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop(), seed=3)
            manager.register_leg(call.leg())
            await asyncio.sleep(1.0)
            base = (await stats(call.browser))["inbound-rtp"]["jitter"]
            manager.apply(parse_fault({"kind": "latency", "room": "r1", "ms": 150,
                                       "jitter_ms": 100, "direction": "down"}))
            await asyncio.sleep(4.0)
            jitter = (await stats(call.browser))["inbound-rtp"]["jitter"]
            # RTP jitter is in 90 kHz units; +/- 60 ms measured ~30 ms against ~5 ms without
            # (order is kept, which narrows the spread); +/- 100 ms gives a wider margin.
            assert jitter / 90_000 > base / 90_000 + 0.015

    run(main())


# --- bandwidth -----------------------------------------------------------------------------

async def _rate_kbps(pc: RTCPeerConnection, seconds: float) -> float:
    a = (await stats(pc))["transport"]["bytesReceived"]
    await asyncio.sleep(seconds)
    b = (await stats(pc))["transport"]["bytesReceived"]
    return float((b - a) * 8 / seconds / 1000)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_bandwidth_cap_keeps_bitrate_under_it(direction: str) -> None:
    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop())
            manager.register_leg(call.leg())
            receiver = call.server if direction == "up" else call.browser
            await asyncio.sleep(1.0)
            free = await _rate_kbps(receiver, 2.0)
            assert free > 200  # ~500 kbps on a quiet machine: the cap below must bite
            manager.apply(parse_fault({"kind": "bandwidth", "room": "r1", "kbps": 120,
                                       "direction": direction}))
            await asyncio.sleep(1.0)
            capped = await _rate_kbps(receiver, 4.0)
            assert 40 < capped <= 120 * 1.05, capped
            frames = call.at_browser.frames + call.at_server.frames
            await asyncio.sleep(0.5)
            assert call.at_browser.frames + call.at_server.frames > frames  # degraded, alive

    run(main())


# --- blackout ------------------------------------------------------------------------------

def test_blackout_stops_media_and_ice_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice gives up after 6 failed consent checks 4-6 s apart (~30 s); shortened here only.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)

    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop())
            manager.register_leg(call.leg())
            await asyncio.sleep(1.5)
            assert call.server.connectionState == "connected"
            manager.apply(parse_fault({"kind": "blackout", "room": "r1", "participant": "alice",
                                       "duration_s": 60}))
            await asyncio.sleep(0.5)
            frames = (call.at_server.frames, call.at_browser.frames)
            await asyncio.sleep(1.0)
            assert (call.at_server.frames, call.at_browser.frames) == frames
            await wait_for(lambda: call.server.connectionState in ("failed", "closed"), 10)
            await wait_for(lambda: call.browser.connectionState in ("failed", "closed"), 10)

    run(main())


def test_short_blackout_reverts_and_media_resumes() -> None:
    async def main() -> None:
        async with Call() as call:
            manager = FaultManager(asyncio.get_running_loop())
            manager.register_leg(call.leg())
            await asyncio.sleep(1.0)
            manager.apply(parse_fault({"kind": "blackout", "room": "r1", "duration_s": 1.5}))
            await asyncio.sleep(0.4)
            stalled = call.at_browser.frames
            await asyncio.sleep(0.8)
            assert call.at_browser.frames == stalled
            await wait_for(lambda: not manager.active(), 3)  # reverted by itself
            await wait_for(lambda: call.at_browser.frames > stalled + 10, 8)
            assert call.server.connectionState == "connected"

    run(main())


# --- kill ----------------------------------------------------------------------------------

def test_kill_closes_the_server_peer_connection() -> None:
    async def main() -> None:
        async with Call() as call:
            events: list[CallEvent] = []
            bus = EventBus()
            bus.add_sink(events.append)
            manager = FaultManager(asyncio.get_running_loop(), bus)
            other = Leg("r1", "bob", "p-bob", "subscribe", RTCPeerConnection())
            leg = call.leg()
            manager.register_leg(leg)
            manager.register_leg(other)
            manager.apply(parse_fault({"kind": "kill", "room": "r1", "participant": "alice"}))
            await wait_for(lambda: call.server.connectionState == "closed", 3)
            assert leg.closed == 1 and other.closed == 0
            assert other.pc.connectionState == "new"
            await other.pc.close()
            assert events[0].kind == "fault_started" and events[0].data["legs"] == 1

    run(main())


# --- video effects -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["freeze_video", "black_video"])
def test_video_effects_reach_the_decoded_frames(kind: str) -> None:
    async def main() -> None:
        manager = FaultManager(asyncio.get_running_loop())
        track = FilteredTrack(MovingBarTrack(), VideoEffectFilter(manager, "r1", "bob"))
        async with Call(server_track=track) as call:
            assert manager.video_effect("r1", "bob") is None
            manager.apply(parse_fault({"kind": kind, "room": "r1", "participant": "bob"}))
            assert manager.video_effect("r1", "bob") == kind.removesuffix("_video")
            assert manager.video_effect("r1", "alice") is None
            await asyncio.sleep(1.5)
            frames_before = call.at_browser.frames
            await asyncio.sleep(0.5)
            assert call.at_browser.frames > frames_before + 5  # frames keep arriving...
            last = call.at_browser.last[-4:]
            if kind == "black_video":  # ...but black
                assert all(f.mean() < 25 and f.std() < 3 for f in last)
            else:  # ...but the bar stands still
                assert len({bar_position(f) for f in last}) == 1
            manager.clear()
            await asyncio.sleep(1.5)
            last = call.at_browser.last[-4:]
            assert all(f.mean() > 90 for f in last)
            assert len({bar_position(f) for f in last}) == 4

    run(main())


def test_follows_the_leg_registry_of_the_call_page() -> None:
    from videochat.media.legs import LegRegistry, MediaLeg

    async def main() -> None:
        async with Call() as call:
            loop = asyncio.get_running_loop()
            manager = FaultManager(loop)
            registry = LegRegistry()
            registry.add_listener(manager.leg_listener)
            leg = MediaLeg("l1", "r1", "alice", "p-a", "publish", call.server, loop)
            registry.register(leg)
            manager.apply(parse_fault({"kind": "kill", "room": "r1", "participant": "alice"}))
            await wait_for(lambda: call.server.connectionState == "closed", 3)
            await wait_for(lambda: not registry.legs(), 3)  # the registry saw it close

    run(main())


def test_a_timer_that_fires_before_the_faults_end_by_our_clock_still_ends_it() -> None:
    # uvloop's timers run on a cached millisecond clock and may fire a hair before the end by
    # the manager's clock. Such a fault once never ended: the early timer found nothing due.
    async def main() -> None:
        now = [100.0]
        manager = FaultManager(asyncio.get_running_loop(), clock=lambda: now[0])
        manager.apply(parse_fault({"kind": "loss", "room": "r1", "percent": 5,
                                   "duration_s": 0.2}))
        now[0] = 100.1  # when the timer fires (0.2 s from now), our clock is 0.1 s short
        await asyncio.sleep(0.25)
        assert len(manager.active()) == 1
        now[0] = 100.3
        await asyncio.sleep(0.35)
        assert manager.active() == []

    run(main())
