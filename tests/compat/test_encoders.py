"""The server's encoders: VP8 bitrate per rung and per REMB with our floor, Opus at speech rate."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.codecs.vpx import Vp8Encoder
from fakes import FakeClock

from videochat.compat.encoders import (
    RAISE_EVERY_S,
    RungVp8Encoder,
    install_encoder,
    install_leg_encoders,
    opus_encoder,
    sender_encoder,
)


def test_bitrate_is_the_rung_cap_within_the_estimate_less_audio() -> None:
    clock = FakeClock()
    enc = RungVp8Encoder(800_000, clock=clock)
    assert enc.target_bitrate == 800_000  # no estimate yet: the rung's target
    enc.target_bitrate = 300_000  # a REMB, as aiortc's sender sets it
    assert enc.remb_bps == 300_000 and enc.target_bitrate == 260_000  # 40 kbps for audio
    enc.cap_bps = 100_000  # the ladder steps down to 180p10
    assert enc.target_bitrate == 100_000
    enc.target_bitrate = 60_000
    assert enc.target_bitrate == 30_000  # our floor, not aiortc's 250 kbps
    enc.target_bitrate = 10_000_000
    clock.t += RAISE_EVERY_S
    enc.target_bitrate = 10_000_000
    assert enc.target_bitrate == 100_000  # the rung caps it


def test_start_bitrate_and_bad_values() -> None:
    assert RungVp8Encoder(800_000, start_bps=300_000).target_bitrate == 300_000
    assert RungVp8Encoder(100_000, start_bps=300_000).target_bitrate == 100_000
    with pytest.raises(ValueError, match="cap 10"):
        RungVp8Encoder(10, floor_bps=30_000)


def test_raises_wait_but_falls_apply_at_once() -> None:
    """Each change rebuilds libvpx (a keyframe): a REMB wobbling every second must not."""
    clock = FakeClock()
    enc = RungVp8Encoder(1_500_000, start_bps=300_000, clock=clock)
    enc.target_bitrate = 400_000  # the first estimate replaces the start guess at once
    assert enc.target_bitrate == 360_000
    changes = enc.changes
    for k in range(20):  # +-5 % around 500 kbps, a REMB every 0.2 s
        clock.t += 0.2
        enc.target_bitrate = 540_000 + (20_000 if k % 2 else -20_000)
    assert enc.changes - changes == 1  # one raise (360 -> ~500), after RAISE_EVERY_S
    before = enc.target_bitrate
    enc.target_bitrate = 200_000  # congestion: Chrome cut its estimate
    assert enc.target_bitrate == 160_000 < before


def _frames(n: int, w: int, h: int, fps: int) -> list[av.VideoFrame]:
    """A moving gradient with a little noise: a camera's worth of detail, not pure noise
    (which no VP8 quantiser squeezes to 100 kbps)."""
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = (xs * 2 + ys + i * 8) % 256
        img = np.stack([base, (base * 3) % 256, 255 - base], axis=-1)
        img = img + rng.integers(0, 24, (h, w, 3))
        frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8),
                                           format="bgr24")
        frame.pts, frame.time_base = i * 90_000 // fps, fractions.Fraction(1, 90_000)
        out.append(frame)
    return out


def test_encoded_size_follows_the_target_below_aiortcs_floor() -> None:
    """A busy picture at 320x180, 10 fps, for 3 s: at a 100 kbps rung the stream is a
    fraction of what aiortc's encoder (250 kbps at least) makes of the same frames."""
    frames = _frames(30, 320, 180, 10)

    def size(encoder: Vp8Encoder) -> int:
        return sum(sum(len(p) for p in encoder.encode(f)[0]) for f in frames)

    ours = RungVp8Encoder(100_000)
    theirs = Vp8Encoder()
    theirs.target_bitrate = 100_000  # clamped to 250 kbps
    ours_bytes, theirs_bytes = size(ours), size(theirs)
    assert ours.codec is not None and ours.codec.bit_rate == 100_000
    assert theirs.target_bitrate == 250_000
    assert ours_bytes * 8 / 3 < 200_000  # ~100 kbps, with the keyframe's overshoot
    assert ours_bytes < theirs_bytes * 0.7


def test_opus_at_speech_rate() -> None:
    enc = opus_encoder()
    assert enc.codec.bit_rate == 32_000
    frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate, frame.pts = 48_000, 0
    frame.time_base = fractions.Fraction(1, 48_000)
    payloads, _ = enc.encode(frame)
    assert enc.codec.bit_rate == 32_000 and isinstance(payloads, list)


def test_installed_on_a_negotiated_leg_before_its_first_frame() -> None:
    async def main() -> None:
        browser, server = RTCPeerConnection(), RTCPeerConnection()
        browser.addTransceiver("video", direction="recvonly")
        browser.addTransceiver("audio", direction="recvonly")
        await browser.setLocalDescription(await browser.createOffer())
        await server.setRemoteDescription(browser.localDescription)
        from aiortc.mediastreams import AudioStreamTrack

        server.addTrack(VideoStreamTrack())
        server.addTrack(AudioStreamTrack())
        await server.setLocalDescription(await server.createAnswer())
        video = install_leg_encoders(server, 450_000, start_bps=300_000)
        assert isinstance(video, RungVp8Encoder) and video.target_bitrate == 300_000
        kinds = {s.track.kind: sender_encoder(s) for s in server.getSenders() if s.track}
        assert kinds["video"] is video
        assert kinds["audio"].codec.bit_rate == 32_000
        assert install_leg_encoders(server, 450_000) is video  # idempotent
        # replacing a running encoder keeps the picture id going
        sender = next(s for s in server.getSenders() if s.track and s.track.kind == "video")
        replacement = RungVp8Encoder(200_000)
        install_encoder(sender, replacement)
        assert replacement.picture_id == video.picture_id
        await browser.close()
        await server.close()

    import asyncio

    asyncio.run(main())
