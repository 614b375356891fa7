"""An encoded frame as a publisher sent it (VP8 or Opus), ready to be forwarded without decoding.

aiortc's sender packs an `av.Packet` (pts + time_base) instead of encoding it, so a forwarded
frame costs the server no codec work. What the relay needs to know about a frame without
decoding it is read from the bitstream here: whether a VP8 frame is a keyframe (a forwarded
subscriber may only start, or resume after a loss, on one) and its size (keyframes carry it;
diagnostics report it), and how many samples an Opus packet holds (to stamp the next one).
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from typing import Any

import av

from videochat.exceptions import ValidationError

FORWARDABLE_CODECS = frozenset({"VP8", "opus"})
_VP8_START_CODE = b"\x9d\x01\x2a"
# Opus TOC (RFC 6716 3.1): frame duration in 1/48000 s for each configuration number.
_SILK = (480, 960, 1920, 2880)
_HYBRID = (480, 960)
_CELT = (120, 240, 480, 960)


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when `data` is a VP8 keyframe (RFC 6386 9.1), else None."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != _VP8_START_CODE:
        return None
    width = (data[6] | data[7] << 8) & 0x3FFF
    height = (data[8] | data[9] << 8) & 0x3FFF
    return width, height


def opus_samples(data: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (960 = 20 ms when unreadable)."""
    if not data:
        return 960
    config, code = data[0] >> 3, data[0] & 3
    if config < 12:
        per_frame = _SILK[config % 4]
    elif config < 16:
        per_frame = _HYBRID[config % 2]
    else:
        per_frame = _CELT[config % 4]
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = data[1] & 0x3F if len(data) > 1 else 1
    return per_frame * max(1, frames)


@dataclass(frozen=True)
class EncodedFrame:
    """One publisher frame, still encoded; `packet` is shared by every forwarded subscriber
    (aiortc's sender only reads it)."""

    kind: str  # "video" | "audio"
    codec: str
    packet: av.Packet[Any]
    keyframe: bool
    width: int = 0  # the stream's size when known (keyframes carry it), 0 otherwise
    height: int = 0
    arrived_at: float = 0.0  # monotonic time the server received it (relay latency)

    def __post_init__(self) -> None:
        if self.kind not in ("video", "audio"):
            raise ValidationError("encoded frame kind", self.kind, "must be 'video' or 'audio'")

    @property
    def pts(self) -> int:
        return int(self.packet.pts or 0)

    @property
    def size_bytes(self) -> int:
        return int(self.packet.size)

    @classmethod
    def make(cls, kind: str, codec: str, data: bytes, pts: int, clock_rate: int,
             size: tuple[int, int] | None, arrived_at: float = 0.0) -> EncodedFrame:
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, clock_rate)
        key = kind == "audio" or vp8_keyframe_size(data) is not None
        packet.is_keyframe = key  # relay queues drop to the next keyframe, never mid-chain
        w, h = size or (0, 0)
        return cls(kind, codec, packet, key, w, h, arrived_at)

    def restamped(self, pts: int) -> EncodedFrame:
        """A copy at another pts (a subscriber's stream must never go back in time)."""
        packet = av.Packet(bytes(self.packet))
        packet.pts = pts
        packet.time_base = self.packet.time_base
        packet.is_keyframe = self.keyframe
        return EncodedFrame(self.kind, self.codec, packet, self.keyframe, self.width, self.height,
                            self.arrived_at)
