"""Encoders for the server's senders: a VP8 encoder whose bitrate follows the ladder's rung and
the receiver's estimate, an Opus encoder at speech rate, and the sender's encoder slot.

Why (aiortc 1.16 internals, pinned by tests/compat/test_private_names.py):

* `RTCRtpSender` creates its encoder on the first frame (`get_encoder`) into the private
  `__encoder`, and sets `encoder.target_bitrate` from each REMB the receiver sends. aiortc's
  `Vp8Encoder` clamps that to 250 kbps-1.5 Mbps and knows nothing of the rung the relay scales
  frames to: a 180p10 rung was encoded at 250 kbps or more, which a 200 kbps path cannot carry.
  `RungVp8Encoder` takes min(REMB - audio's share, the rung's target), 30 kbps at the least.
* `Vp8Encoder.encode` rebuilds its libvpx context (and so sends a keyframe) whenever
  `target_bitrate` moves by more than 10 %. REMB moves every second: the target we report
  moves only on a real change: down at once (congestion), up at most every `RAISE_EVERY_S`.
  The buffer size it gives libvpx comes from the private `__target_bitrate`: kept in step.
* `OpusEncoder` encodes at 96 kbps (music quality): `opus_encoder()` sets speech's 32 kbps,
  before the codec opens on the first frame.

`install_encoder(sender, encoder)` puts one in a sender's slot (before its first frame, or in
place of the one it made: a new VP8 encoder starts with a keyframe; the picture id carries on).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

logger = logging.getLogger(__name__)

RAISE_EVERY_S = 2.0  # a raise rebuilds the encoder (a keyframe): not on every REMB
RAISE_RATIO = 1.15  # ...and only for a real change
LOWER_RATIO = 0.9  # a fall of 10 % or more applies at once: the path is congested
_ENCODER = "_RTCRtpSender__encoder"
_VP8_TARGET = "_Vp8Encoder__target_bitrate"


class RungVp8Encoder(Vp8Encoder):
    """VP8 at min(the receiver's estimate less `reserve_bps`, the rung's cap), >= `floor_bps`.

    `cap_bps` is set by the ladder (the rung's target); aiortc's REMB handling sets
    `target_bitrate`, which here records the estimate. Thread-safe enough for its use: both are
    set on the loop, read by `encode` in aiortc's executor thread.
    """

    def __init__(self, cap_bps: int, *, floor_bps: int = 30_000, reserve_bps: int = 40_000,
                 start_bps: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if floor_bps <= 0 or cap_bps < floor_bps:
            raise ValueError(f"encoder bitrates: cap {cap_bps} must be >= floor {floor_bps} > 0")
        self.floor_bps = floor_bps
        self.reserve_bps = reserve_bps
        self._cap = cap_bps
        self.remb_bps: int | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._raised_at = clock()
        self.changes = 0
        # Before the first estimate: the cap, or less (WebRTC starts at 300 kbps and probes).
        self._apply(self._wanted() if start_bps is None else max(floor_bps,
                                                                  min(start_bps, cap_bps)))

    # -- what aiortc reads and writes ------------------------------------------------------
    @property
    def target_bitrate(self) -> int:
        return self._effective

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        """aiortc's REMB handler: the receiver's estimate for this stream, in bit/s."""
        first = self.remb_bps is None
        self.remb_bps = int(bitrate)
        self._update(at_once=first)  # the start rate was a guess: the first estimate wins

    # -- what the ladder sets ----------------------------------------------------------------
    @property
    def cap_bps(self) -> int:
        return self._cap

    @cap_bps.setter
    def cap_bps(self, bps: int) -> None:
        bps = max(self.floor_bps, int(bps))
        if bps != self._cap:
            self._cap = bps
            self._update(at_once=True)

    def _wanted(self) -> int:
        want = self._cap
        if self.remb_bps is not None:
            want = min(want, self.remb_bps - self.reserve_bps)
        return max(self.floor_bps, want)

    def _update(self, *, at_once: bool = False) -> None:
        with self._lock:
            want, now = self._wanted(), self._clock()
            current = self._effective
            if want == current:
                return
            if want <= current * LOWER_RATIO or (at_once and want < current):
                self._apply(want)
            elif at_once or (want >= current * RAISE_RATIO
                             and now - self._raised_at >= RAISE_EVERY_S):
                self._raised_at = now
                self._apply(want)

    def _apply(self, bps: int) -> None:
        self._effective = bps
        setattr(self, _VP8_TARGET, bps)  # noqa: B010 - libvpx's buffer size follows it
        self.changes += 1


def opus_encoder(bitrate_bps: int = 32_000) -> OpusEncoder:
    """aiortc's Opus encoder at `bitrate_bps` (it opens on the first frame)."""
    encoder = OpusEncoder()
    encoder.codec.bit_rate = bitrate_bps
    return encoder


def sender_encoder(sender: RTCRtpSender) -> Any | None:
    """The encoder a sender uses (None before its first frame)."""
    return getattr(sender, _ENCODER, None)


def install_encoder(sender: RTCRtpSender, encoder: Any) -> None:
    """Make `sender` encode with `encoder` from its next frame on."""
    old = sender_encoder(sender)
    if isinstance(old, Vp8Encoder) and isinstance(encoder, Vp8Encoder):
        encoder.picture_id = old.picture_id  # receivers see one continuous stream
    setattr(sender, _ENCODER, encoder)  # noqa: B010 - the sender's private slot
    logger.debug("sender %s encodes with %s", id(sender), type(encoder).__name__)


def install_leg_encoders(pc: Any, cap_bps: int, *, start_bps: int = 300_000,
                         audio_bps: int = 32_000, floor_bps: int = 30_000,
                         reserve_bps: int = 40_000) -> RungVp8Encoder | None:
    """Give a subscriber leg's senders our encoders: VP8 video at the rung's bitrate, Opus at
    speech rate. Returns the video encoder (None when the leg does not send VP8 video).

    The negotiated codec is the transceiver's first (`_codecs`, set by the answer): a browser
    that negotiated H.264 keeps aiortc's own encoder.
    """
    video: RungVp8Encoder | None = None
    for transceiver in pc.getTransceivers():
        sender = transceiver.sender
        codecs = getattr(transceiver, "_codecs", None) or []
        if sender.track is None or not codecs:
            continue
        mime = codecs[0].mimeType.lower()
        current = sender_encoder(sender)
        if mime == "video/vp8":
            if isinstance(current, RungVp8Encoder):
                video = current
                continue
            video = RungVp8Encoder(cap_bps, floor_bps=floor_bps, reserve_bps=reserve_bps,
                                   start_bps=start_bps)
            install_encoder(sender, video)
        elif mime == "audio/opus" and current is None:
            # Only before the first frame: a new Opus encoder restarts its timestamps.
            install_encoder(sender, opus_encoder(audio_bps))
    return video
