"""Sampler and LegStats: unit checks of the aiortc quirks, then a real aiortc loopback."""

from __future__ import annotations

import asyncio
import fractions
import random
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from aiortc.rtp import is_rtcp

from videochat.exceptions import ValidationError
from videochat.metrics.stats import (
    FrameCounter,
    LegStats,
    MetricSample,
    Sampler,
    rtx_ssrcs_from_sdp,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = {"room": "r1", "call_id": "c1", "participant": "alice", "direction": "publish"}


def _transport(rx: int, tx: int) -> dict[str, Any]:
    return {"type": "transport", "bytesReceived": rx, "bytesSent": tx}


def _inbound(ssrc: int, received: int, lost: int, jitter: int = 900) -> dict[str, Any]:
    return {"type": "inbound-rtp", "kind": "video", "ssrc": ssrc, "packetsReceived": received,
            "packetsLost": lost, "jitter": jitter}


# --- pure LegStats -------------------------------------------------------------------------

def test_inbound_bitrate_loss_jitter_fps() -> None:
    leg = LegStats(leg="L", tags=TAGS)
    assert leg.update({"t": _transport(0, 0), "i": _inbound(1, 0, 0)}, 0.0, T0) is None
    sample = leg.update({"t": _transport(125_000, 2_500), "i": _inbound(1, 90, 10, 1800)}, 2.0,
                        T0 + timedelta(seconds=2), frames=(40, 640, 480), quality="high")
    assert sample is not None
    assert sample.bitrate_in_kbps == pytest.approx(500.0)  # 125 kB in 2 s
    assert sample.bitrate_out_kbps == pytest.approx(10.0)
    assert sample.loss_fraction == pytest.approx(0.1)
    assert sample.loss_cumulative == 10
    assert sample.jitter_ms == pytest.approx(20.0)  # 1800 / 90 kHz
    assert sample.fps == pytest.approx(20.0)
    assert (sample.width, sample.height, sample.quality) == (640, 480, "high")
    assert sample.rtt_ms is None  # aiortc has RTT only in remote-inbound-rtp
    assert sample.direction == "publish" and sample.kind == "video"


def test_audio_jitter_uses_48k_clock() -> None:
    leg = LegStats(leg="L", tags=TAGS)
    audio = {"type": "inbound-rtp", "kind": "audio", "ssrc": 7, "packetsReceived": 0,
             "packetsLost": 0, "jitter": 0}
    leg.update({"a": audio}, 0.0, T0)
    sample = leg.update({"a": {**audio, "packetsReceived": 50, "jitter": 480}}, 1.0, T0)
    assert sample is not None and sample.kind == "audio"
    assert sample.jitter_ms == pytest.approx(10.0)
    assert sample.fps is None


def test_rtx_entry_overwriting_media_entry_is_detected_by_sdp() -> None:
    leg = LegStats(leg="L", tags=TAGS)
    rtx = {"type": "_rtx", "ssrcs": [222]}
    leg.update({"i": _inbound(111, 100, 0), "_rtx": rtx}, 0.0, T0)
    good = leg.update({"i": _inbound(111, 200, 5), "_rtx": rtx}, 1.0, T0)
    assert good is not None and good.loss_fraction == pytest.approx(5 / 105)
    # The RTX stream's entry now sits under the same id, with tiny counters.
    hidden = leg.update({"i": _inbound(222, 3, 0), "_rtx": rtx}, 2.0, T0)
    assert hidden is not None
    assert hidden.loss_fraction is None  # unknown, not a fake 0
    assert hidden.loss_cumulative == 5  # carried from the media stream
    assert leg.rtx_overwrites == 1
    back = leg.update({"i": _inbound(111, 400, 15), "_rtx": rtx}, 3.0, T0)
    assert back is not None and back.loss_fraction == pytest.approx(10 / 210)


def test_rtx_detected_by_counters_going_backwards_without_sdp() -> None:
    leg = LegStats(leg="L", tags=TAGS)
    leg.update({"i": _inbound(111, 500, 0)}, 0.0, T0)
    leg.update({"i": _inbound(111, 600, 0)}, 1.0, T0)
    sample = leg.update({"i": _inbound(999, 4, 0)}, 2.0, T0)
    assert sample is not None and sample.loss_fraction is None and leg.rtx_overwrites == 1


def test_media_entries_from_receiver_win_over_getstats_entry() -> None:
    leg = LegStats(leg="L", tags=TAGS)
    media = {"type": "media-inbound", "kind": "video", "ssrc": 111, "packetsReceived": 100,
             "packetsLost": 0, "jitter": 90}
    leg.update({"i": _inbound(222, 1, 0), "m": media}, 0.0, T0)
    sample = leg.update({"i": _inbound(222, 2, 0),
                         "m": {**media, "packetsReceived": 180, "packetsLost": 20}}, 1.0, T0)
    assert sample is not None and sample.loss_fraction == pytest.approx(0.2)
    assert leg.rtx_overwrites == 0


def test_outbound_leg_takes_rtt_and_loss_from_remote_inbound() -> None:
    leg = LegStats(leg="S", tags={**TAGS, "direction": "subscribe"})
    out = {"type": "outbound-rtp", "kind": "video", "ssrc": 5, "packetsSent": 0, "bytesSent": 0}
    leg.update({"o": out, "t": _transport(0, 0)}, 0.0, T0)
    remote = {"type": "remote-inbound-rtp", "kind": "video", "ssrc": 5, "roundTripTime": 0.042,
              "fractionLost": 64, "packetsLost": 12, "jitter": 450}
    sample = leg.update({"o": out, "r": remote, "t": _transport(1_000, 62_500)}, 1.0, T0)
    assert sample is not None and sample.direction == "subscribe"
    assert sample.rtt_ms == pytest.approx(42.0)
    assert sample.loss_fraction == pytest.approx(0.25)
    assert sample.loss_cumulative == 12
    assert sample.jitter_ms == pytest.approx(5.0)
    assert sample.bitrate_out_kbps == pytest.approx(500.0)


def test_sdp_fid_groups() -> None:
    sdp = "v=0\r\na=ssrc-group:FID 111 222\r\na=ssrc:111 cname:x\r\na=ssrc-group:FID 333 444\r\n"
    assert rtx_ssrcs_from_sdp(sdp) == {222, 444}
    assert rtx_ssrcs_from_sdp(None) == set()


def test_sample_validates_itself() -> None:
    with pytest.raises(ValidationError):
        MetricSample(at=datetime(2026, 1, 1), room="r", call_id=None, participant="p", leg="l",
                     direction="publish", kind="video")
    with pytest.raises(ValidationError):
        MetricSample(at=T0, room="r", call_id=None, participant="p", leg="l",
                     direction="sideways", kind="video")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        MetricSample(at=T0, room="", call_id=None, participant="p", leg="l",
                     direction="publish", kind="video")


def test_frame_counter_snapshot_resets() -> None:
    counter = FrameCounter()
    for _ in range(5):
        counter.on_frame(320, 240)
    assert counter.snapshot() == (5, 320, 240)
    assert counter.snapshot() == (0, 320, 240)
    assert counter.total == 5


def test_sampler_rejects_incomplete_tags() -> None:
    loop = asyncio.new_event_loop()
    try:
        sampler = Sampler(loop, lambda s: None)
        with pytest.raises(ValidationError):
            sampler.add_leg("x", object(), {"room": "r"}, FrameCounter(), lambda: None)
    finally:
        loop.close()


# --- the real thing: two aiortc peer connections on loopback --------------------------------

class NoiseTrack(MediaStreamTrack):
    """Synthetic camera: random frames so VP8 has real work and a real bitrate."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 20) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._n = 0
        self._start: float | None = None
        self._rng = np.random.default_rng(1)
        self.counter = FrameCounter()

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        self._n += 1
        await asyncio.sleep(max(0.0, self._start + self._n / self.fps - loop.time()))
        img = self._rng.integers(0, 255, (self.height, self.width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(self._n * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = fractions.Fraction(VIDEO_TIME_BASE)
        self.counter.on_frame(self.width, self.height)
        return frame


class LossySeam:
    """Drops a fraction of RTP (never RTCP, DTLS or STUN) at RTCIceTransport._send."""

    def __init__(self, ice_transport: Any, loss: float, seed: int = 7) -> None:
        self.loss = loss
        self.rng = random.Random(seed)
        self.rtp_sent = 0
        self.rtp_dropped = 0
        self._orig: Callable[[bytes], Awaitable[None]] = ice_transport._send
        ice_transport._send = self._send

    async def _send(self, data: bytes) -> None:
        is_rtp = len(data) > 1 and 128 <= data[0] <= 191 and not is_rtcp(data)
        if is_rtp:
            if self.rng.random() < self.loss:
                self.rtp_dropped += 1
                return
            self.rtp_sent += 1
        await self._orig(data)


class CountingRecv:
    """Counts bytes arriving at RTCIceTransport._recv: the reference for the bitrate."""

    def __init__(self, ice_transport: Any) -> None:
        self.bytes = 0
        self._orig: Callable[[], Awaitable[bytes]] = ice_transport._recv
        ice_transport._recv = self._recv

    async def _recv(self) -> bytes:
        data = await self._orig()
        self.bytes += len(data)
        return data


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # aioice never offers 127.0.0.1 (RFC 8445); keep the test on loopback anyway.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


async def _connect() -> tuple[RTCPeerConnection, RTCPeerConnection, NoiseTrack, FrameCounter,
                              list[asyncio.Task[None]]]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    track = NoiseTrack()
    sender.addTrack(track)
    received = FrameCounter()
    tasks: list[asyncio.Task[None]] = []

    @receiver.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                frame = await remote.recv()
                received.on_frame(frame.width, frame.height)

        tasks.append(asyncio.ensure_future(consume()))

    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    for _ in range(100):
        if sender.connectionState == "connected" and receiver.connectionState == "connected":
            break
        await asyncio.sleep(0.1)
    assert sender.connectionState == "connected"
    return sender, receiver, track, received, tasks


@pytest.mark.timeout(60)
def test_sampler_on_aiortc_loopback_measures_loss_and_bitrate(loopback_ice: None) -> None:
    loss = 0.10

    async def scenario() -> tuple[list[MetricSample], LossySeam, CountingRecv, Sampler, float]:
        sender, receiver, track, received, tasks = await _connect()
        seam = LossySeam(sender.getSenders()[0].transport.transport, loss)
        counting = CountingRecv(receiver.getReceivers()[0].transport.transport)
        await asyncio.sleep(1.0)  # let the encoder settle
        samples: list[MetricSample] = []
        loop = asyncio.get_running_loop()
        sampler = Sampler(loop, samples.append)
        sampler.add_leg("pub", receiver, dict(TAGS), received, lambda: "high")
        sampler.add_leg("sub", sender, {**TAGS, "participant": "bob", "direction": "subscribe"},
                        track.counter, lambda: "medium")
        # Reference bytes over exactly the sampled window: from the first tick to the last.
        start_bytes, t0 = counting.bytes, loop.time()
        seam_dropped0, seam_sent0 = seam.rtp_dropped, seam.rtp_sent
        sampler.start()
        await asyncio.sleep(6.5)
        sampler.stop()
        elapsed = loop.time() - t0
        ref_kbps = (counting.bytes - start_bytes) * 8 / elapsed / 1000
        seam.rtp_dropped -= seam_dropped0
        seam.rtp_sent -= seam_sent0
        for task in tasks:
            task.cancel()
        await sender.close()
        await receiver.close()
        return samples, seam, counting, sampler, ref_kbps

    samples, seam, _, sampler, ref_kbps = asyncio.run(scenario())
    pub = [s for s in samples if s.leg == "pub"]
    sub = [s for s in samples if s.leg == "sub"]
    assert len(pub) >= 5 and len(sub) >= 5
    assert all(s.room == "r1" and s.call_id == "c1" for s in samples)
    injected = seam.rtp_dropped / (seam.rtp_dropped + seam.rtp_sent)
    assert 0.06 < injected < 0.14

    # Receiving leg: loss from packetsLost/packetsReceived deltas, within tolerance of injected.
    fractions_ = [s.loss_fraction for s in pub if s.loss_fraction is not None]
    assert len(fractions_) >= 4
    measured = sum(fractions_) / len(fractions_)
    assert abs(measured - injected) < 0.04, (measured, injected)
    assert pub[-1].loss_cumulative is not None and pub[-1].loss_cumulative > 10

    # Bitrate: the mean of the samples against the bytes counted at the ICE seam.
    mean_in = sum(s.bitrate_in_kbps or 0 for s in pub) / len(pub)
    assert ref_kbps > 100
    assert abs(mean_in - ref_kbps) / ref_kbps < 0.2, (mean_in, ref_kbps)

    # Frames we counted ourselves: about 20 fps at 320x240 on both ends.
    assert 12 <= pub[-1].fps <= 26 if pub[-1].fps is not None else False
    assert (pub[-1].width, pub[-1].height) == (320, 240)
    assert pub[-1].quality == "high" and sub[-1].quality == "medium"

    # Sending leg: RTT and loss only from remote-inbound-rtp.
    rtts = [s.rtt_ms for s in sub if s.rtt_ms is not None]
    assert rtts and all(0 <= r < 200 for r in rtts)
    sub_loss = [s.loss_fraction for s in sub[2:] if s.loss_fraction is not None]
    assert sub_loss and max(sub_loss) > 0.02
    assert (sub[-1].bitrate_out_kbps or 0) > 100

    # One sample per leg per second, never two in the same second.
    assert len({s.at for s in pub}) == len(pub)
    # Sampling must not stall the media loop.
    assert sampler.max_tick_s < 0.05
    assert sampler.errors == 0


@pytest.mark.timeout(30)
def test_leg_listener_samples_registered_legs_until_removed(loopback_ice: None) -> None:
    """Wired as a LegRegistry listener: the sampler binds to the leg's loop and starts."""
    from types import SimpleNamespace

    async def scenario() -> tuple[dict[str, MetricSample], list[MetricSample], Sampler]:
        sender, receiver, track, received, tasks = await _connect()
        samples: list[MetricSample] = []
        sampler = Sampler(None, samples.append, period_s=0.3)
        leg = SimpleNamespace(leg_id="pub-1", pc=receiver, loop=asyncio.get_running_loop(),
                              room="r1", call_id="c1", participant="alice",
                              direction="publish")
        listener = sampler.leg_listener(lambda leg_id: f"q-{leg_id}")
        listener(leg, True)
        counter = sampler.counter("pub-1")

        async def feed() -> None:  # what the media code does for each frame it delivers
            while True:
                await asyncio.sleep(0.05)
                counter.on_frame(320, 240)

        tasks.append(asyncio.ensure_future(feed()))
        await asyncio.sleep(1.5)
        latest = sampler.latest("r1")
        listener(leg, False)
        stopped_at = len(samples)
        await asyncio.sleep(0.7)
        assert len(samples) == stopped_at  # removed: no more samples for it
        assert sampler.latest("r1") == {} and sampler.legs() == []
        sampler.stop()
        for task in tasks:
            task.cancel()
        await sender.close()
        await receiver.close()
        return latest, samples, sampler

    latest, samples, _ = asyncio.run(scenario())
    assert set(latest) == {"pub-1"}
    assert len(samples) >= 3
    assert samples[-1].quality == "q-pub-1" and samples[-1].participant == "alice"
    assert samples[-1].fps is not None and samples[-1].fps > 5
    assert (samples[-1].width, samples[-1].height) == (320, 240)


@pytest.mark.timeout(60)
def test_loopback_to_mongo_to_dashboard(loopback_ice: None, mongo_db: Any) -> None:
    """The whole flow: real aiortc legs → Sampler → MetricsStore (SecantusDB) → diagnostics."""
    from videochat.events import CallEvent
    from videochat.metrics.diagnostics import Selection, build_figures, query_events, query_samples
    from videochat.metrics.store import MetricsStore

    store = MetricsStore(mongo_db, flush_interval_s=0.2)

    async def scenario() -> None:
        sender, receiver, track, received, tasks = await _connect()
        sampler = Sampler(asyncio.get_running_loop(), store.record)
        sampler.add_leg("alice-pub", receiver, {**TAGS, "room": "flow"}, received, lambda: "high")
        sampler.add_leg("bob-sub", sender, {**TAGS, "room": "flow", "participant": "bob",
                                            "direction": "subscribe"}, track.counter,
                        lambda: "high")
        store.emit(CallEvent("participant_joined", "flow", participant="alice", call_id="c1"))
        sampler.start()
        await asyncio.sleep(4.5)
        sampler.stop()
        for task in tasks:
            task.cancel()
        await sender.close()
        await receiver.close()

    started = datetime.now(UTC) - timedelta(seconds=2)
    asyncio.run(scenario())
    assert store.close(20)
    sel = Selection(room="flow", start=started, end=datetime.now(UTC) + timedelta(seconds=2))
    series = query_samples(mongo_db, sel)
    traces = series.traces()
    assert set(traces) == {("alice", "alice-pub"), ("bob", "bob-sub")}
    assert len(traces[("alice", "alice-pub")]) >= 3
    assert all((r["bi"] or 0) > 50 for r in traces[("alice", "alice-pub")])
    assert any(r["rtt"] is not None for r in traces[("bob", "bob-sub")])
    figs = build_figures(series, query_events(mongo_db, sel), sel)
    assert len([t for t in figs["rtt"].data if t.name != "events"]) == 1
    assert store.stats()["dropped_overflow"] == 0
