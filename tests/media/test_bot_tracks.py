"""Bot participant media: the stamp survives real VP8, both tracks keep real-time pace."""

from __future__ import annotations

import asyncio
import fractions
import time

import aioice.ice
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, VideoFrame

from videochat.media.bot_tracks import (
    AUDIO_RATE,
    BotAudioTrack,
    BotVideoTrack,
    LatencyProbe,
    decode_stamp,
    draw_stamp,
    render_frame,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
T0_MS = 1_764_115_200_123  # 2025-11-26 00:00:00.123 UTC


def vp8_round_trip(frames: list[VideoFrame], bitrate: int | None = None) -> list[VideoFrame]:
    """Encode with aiortc's VP8 encoder, packetize, depacketize and decode, as a call would."""
    enc, dec = get_encoder(VP8), get_decoder(VP8)
    if bitrate is not None:
        enc.target_bitrate = bitrate  # type: ignore[attr-defined]
    out: list[VideoFrame] = []
    for frame in frames:
        payloads, ts = enc.encode(frame)
        data = b"".join(depayload(VP8, p) for p in payloads)
        out.extend(dec.decode(JitterFrame(data=data, timestamp=ts)))  # type: ignore[arg-type]
    return out


def stamped_frames(width: int, height: int, n: int) -> list[tuple[VideoFrame, tuple[int, int]]]:
    out = []
    for i in range(n):
        stamp = (T0_MS + i * 50, i)
        f = render_frame(width, height, *stamp)
        f.pts = i * 4500
        f.time_base = fractions.Fraction(1, 90000)
        out.append((f, stamp))
    return out


@pytest.mark.parametrize(("width", "height"), [(640, 480), (320, 240)])
def test_stamp_survives_vp8_round_trip(width: int, height: int) -> None:
    sent = stamped_frames(width, height, 20)
    received = vp8_round_trip([f for f, _ in sent])
    assert len(received) == len(sent)
    decoded = [decode_stamp(f) for f in received]
    assert decoded == [s for _, s in sent]


def test_stamp_survives_low_bitrate_and_downscale() -> None:
    # The relay's quality ladder may send a smaller picture at aiortc's minimum bitrate.
    sent = stamped_frames(640, 480, 10)
    received = vp8_round_trip([f for f, _ in sent], bitrate=250_000)
    smaller = [f.reformat(width=256, height=192) for f in received]
    assert [decode_stamp(f) for f in smaller] == [s for _, s in sent]


def test_stamp_read_from_luma_array_and_other_pixel_formats() -> None:
    frame = render_frame(320, 240, T0_MS, 7)
    assert decode_stamp(frame.reformat(format="rgb24")) == (T0_MS, 7)
    assert decode_stamp(frame.to_ndarray(format="gray")) == (T0_MS, 7)
    assert decode_stamp(frame.to_ndarray(format="rgb24")) == (T0_MS, 7)


def test_damaged_or_missing_stamp_is_refused_not_misread() -> None:
    luma = render_frame(320, 240, T0_MS, 42).to_ndarray(format="gray")
    assert decode_stamp(luma) == (T0_MS, 42)
    flipped = luma.copy()
    flipped[12:18, 100:108] = 255 - flipped[12:18, 100:108]  # invert one block of the stamp
    assert decode_stamp(flipped) is None
    assert decode_stamp(np.full((240, 320), 16, np.uint8)) is None
    assert decode_stamp(np.zeros((20, 20), np.uint8)) is None


def test_stamp_encodes_full_64_bit_timestamp_and_32_bit_counter() -> None:
    luma = np.zeros((240, 320), np.uint8)
    draw_stamp(luma, 2**64 - 1, 2**32 - 1)
    assert decode_stamp(luma) == (2**64 - 1, 2**32 - 1)


def test_pattern_moves_between_frames() -> None:
    # Half a second apart, the 8-px sweeping bar (over the bars, not the white one) moved 78 px:
    # it left one place and appeared in another, 120 rows high each.
    a = render_frame(320, 240, T0_MS + 1000, 0).to_ndarray(format="gray")[40:160]
    b = render_frame(320, 240, T0_MS + 1500, 10).to_ndarray(format="gray")[40:160]
    changed = np.nonzero((a != b).any(axis=0))[0]
    assert len(changed) == 16 and changed.max() - changed.min() > 60


def test_burnt_in_text_changes_with_the_time() -> None:
    a = render_frame(320, 240, T0_MS, 0).to_ndarray(format="gray")[160:]
    b = render_frame(320, 240, T0_MS + 1, 0).to_ndarray(format="gray")[160:]
    c = render_frame(320, 240, T0_MS, 1).to_ndarray(format="gray")[160:]
    assert (a != b).any() and (a != c).any()


def test_odd_or_tiny_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        BotVideoTrack(641, 480)
    with pytest.raises(ValueError, match="fps"):
        BotVideoTrack(fps=0)


async def _pull(track: BotVideoTrack | BotAudioTrack, seconds: float) -> tuple[list[object], float]:
    frames: list[object] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        frames.append(await track.recv())
    return frames, time.monotonic() - start


def test_video_track_paces_real_time_and_stamps_wall_clock() -> None:
    async def run() -> None:
        track = BotVideoTrack(320, 240, fps=20)
        frames, elapsed = await _pull(track, 2.0)
        rate = (len(frames) - 1) / elapsed
        assert 18.0 <= rate <= 22.0, rate
        video = [f for f in frames if isinstance(f, VideoFrame)]
        pts = [f.pts for f in video]
        assert pts == sorted(pts) and pts[0] == 0
        assert pts[-1] == pytest.approx(elapsed * 90000, rel=0.1)
        stamps = [decode_stamp(f) for f in video]
        assert [s[1] for s in stamps if s] == list(range(len(video)))
        last_ms = stamps[-1][0] if stamps[-1] else 0
        assert abs(time.time() * 1000 - last_ms) < 200
        track.stop()
        with pytest.raises(MediaStreamError):
            await track.recv()

    asyncio.run(run())


def test_audio_track_paces_real_time_with_sample_pts() -> None:
    async def run() -> None:
        track = BotAudioTrack()
        frames, elapsed = await _pull(track, 2.0)
        audio = [f for f in frames if isinstance(f, AudioFrame)]
        rate = (len(audio) - 1) / elapsed
        assert 45.0 <= rate <= 55.0, rate  # 20 ms frames
        first = audio[0]
        assert first.sample_rate == AUDIO_RATE and first.samples == 960
        assert [f.pts for f in audio[:5]] == [0, 960, 1920, 2880, 3840]
        samples = np.concatenate([f.to_ndarray().ravel() for f in audio[:50]])
        # A 440 Hz tone crosses zero 880 times a second; 50 frames are one second.
        crossings = np.count_nonzero(np.diff(np.signbit(samples.astype(np.int32))))
        assert 860 <= crossings <= 900
        assert np.abs(samples).max() > 5000

    asyncio.run(run())


def test_pacer_skips_ahead_after_a_stall_instead_of_bursting() -> None:
    now = [100.0]

    async def run() -> None:
        track = BotVideoTrack(160, 120, fps=10, monotonic=lambda: now[0])
        await track.recv()
        now[0] += 5.0  # the consumer stalled for 5 s
        f = await track.recv()
        assert isinstance(f, VideoFrame) and f.pts == 5 * 90000
        t = time.monotonic()
        now[0] += 0.1
        await track.recv()
        assert time.monotonic() - t < 0.05  # next slot is due now, not 50 frames of backlog

    asyncio.run(run())


def test_latency_probe_measures_latency_and_missing_frames() -> None:
    clock = [T0_MS / 1000 + 0.080]
    probe = LatencyProbe(wall_clock=lambda: clock[0])
    for no in (0, 1, 4):
        assert probe.observe(render_frame(320, 240, T0_MS, no)) == pytest.approx(80, abs=1)
    assert probe.observe(np.zeros((240, 320), np.uint8)) is None
    summary = probe.summary()
    assert summary["frames_missing"] == 2 and summary["frames_unreadable"] == 1
    assert summary["p50_ms"] == pytest.approx(80, abs=1)


def test_bot_over_a_real_peer_connection_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent through aiortc (VP8 + Opus over SRTP on 127.0.0.1), the stamps read back on the
    receiving side give the end-to-end latency and count no missing frame."""
    # aioice leaves 127.0.0.1 out of host candidates; this test must stay on loopback.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])

    async def run() -> None:
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        probe = LatencyProbe()
        audio_frames: list[AudioFrame] = []
        tasks: list[asyncio.Task[None]] = []

        async def consume(track: MediaStreamTrack) -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if isinstance(frame, VideoFrame):
                    probe.observe(frame)
                else:
                    audio_frames.append(frame)

        @receiver.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tasks.append(asyncio.ensure_future(consume(track)))

        sender.addTrack(BotVideoTrack(320, 240, fps=20))
        sender.addTrack(BotAudioTrack())
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        try:
            deadline = time.monotonic() + 15
            while probe.frames_seen < 60 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await sender.close()
            await receiver.close()
            for task in tasks:
                task.cancel()
        assert probe.frames_seen >= 60
        assert probe.frames_unreadable <= 2  # at most the first, blurry keyframe(s)
        # Real-time media on a loaded 2-core box may drop a frame in aiortc's jitter buffer;
        # the stamps must show it, and it must stay rare.
        assert probe.frames_missing <= 2, probe.summary()
        p50 = probe.percentile(50)
        assert p50 is not None and 0 <= p50 < 250, probe.summary()
        assert len(audio_frames) > 50

    asyncio.run(run())
