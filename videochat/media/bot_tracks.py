"""A synthetic participant's media: a moving test pattern carrying its own timestamp, and a tone.

`BotVideoTrack` draws, straight into YUV planes (no colour conversion per frame):

- a stamp band on top: a 32×4 grid of black/white blocks holding the wall-clock send time (64-bit
  ms), the frame counter (32 bits) and a CRC-32 of both. Blocks scale with the frame (1/32 of the
  width, 1/24 of the height), so the stamp survives VP8 and any downscaling the relay applies;
  `decode_stamp` reads it back; the CRC rejects a damaged stamp rather than return a wrong time.
- colour bars with a white bar sweeping across every two seconds (motion visible at a glance),
- the same time and frame counter burnt in as 7-segment digits for people.

`BotAudioTrack` sends a 440 Hz tone, 48 kHz mono, 20 ms frames. Both tracks pace themselves on the
monotonic clock and skip ahead (never burst) when their consumer falls behind.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE = 48_000
AUDIO_PTIME_S = 0.020
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)

STAMP_COLS = 32
STAMP_ROWS = 4
GRID_ROWS = 24
"""The frame height is divided in 24 rows; the stamp takes the top STAMP_ROWS of them."""

_BLACK = 16
_WHITE = 235
_THRESHOLD = (_BLACK + _WHITE) // 2
_STAMP = struct.Struct(">QI")

Plane = npt.NDArray[np.uint8]

# BT.601 limited-range Y, U, V of the classic bars: white, yellow, cyan, green, magenta, red, blue.
_BARS: tuple[tuple[int, int, int], ...] = (
    (235, 128, 128), (210, 16, 146), (170, 166, 16), (145, 54, 34),
    (106, 202, 222), (81, 90, 240), (41, 240, 110),
)

# 7-segment digits: segments a b c d e f g (top, upper right, lower right, bottom, lower left,
# upper left, middle).
_SEGMENTS: dict[str, str] = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg",
    "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg", "-": "g", " ": "",
}


# ---------------------------------------------------------------------------------------------
# the machine-readable stamp


def _edges(size: int, parts: int) -> list[int]:
    return [round(i * size / parts) for i in range(parts + 1)]


def _stamp_bits(timestamp_ms: int, frame_no: int) -> list[int]:
    payload = _STAMP.pack(timestamp_ms & (2**64 - 1), frame_no & (2**32 - 1))
    word = int.from_bytes(payload + struct.pack(">I", zlib.crc32(payload)), "big")
    n = STAMP_COLS * STAMP_ROWS
    return [(word >> (n - 1 - i)) & 1 for i in range(n)]


def draw_stamp(luma: Plane, timestamp_ms: int, frame_no: int) -> None:
    """Write the stamp blocks into a luma plane (h×w), in place."""
    h, w = luma.shape
    xs, ys = _edges(w, STAMP_COLS), _edges(h, GRID_ROWS)
    for i, bit in enumerate(_stamp_bits(timestamp_ms, frame_no)):
        r, c = divmod(i, STAMP_COLS)
        luma[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = _WHITE if bit else _BLACK


def _luma(frame: VideoFrame | npt.NDArray[np.uint8]) -> Plane:
    if isinstance(frame, np.ndarray):
        return frame if frame.ndim == 2 else frame[..., 0]
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "gray"):
        plane = frame.planes[0]
        flat: Plane = np.frombuffer(memoryview(plane), np.uint8)
        return flat.reshape(frame.height, plane.line_size)[:, : frame.width]
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def decode_stamp(frame: VideoFrame | npt.NDArray[np.uint8]) -> tuple[int, int] | None:
    """(timestamp_ms, frame_no) from a bot frame, or None when there is no intact stamp.

    Accepts a decoded VideoFrame of any size and pixel format, or a luma array (h×w).
    """
    luma = _luma(frame)
    h, w = luma.shape
    if w < STAMP_COLS * 2 or h < GRID_ROWS * 2:
        return None
    xs, ys = _edges(w, STAMP_COLS), _edges(h, GRID_ROWS)
    word = 0
    for r in range(STAMP_ROWS):
        y0, y1 = ys[r], ys[r + 1]
        # Sample the middle half of each block: edges bleed after compression and scaling.
        my0, my1 = y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4
        band = luma[my0:max(my1, my0 + 1)]
        for c in range(STAMP_COLS):
            x0, x1 = xs[c], xs[c + 1]
            mx0, mx1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
            bit = int(band[:, mx0:max(mx1, mx0 + 1)].mean() > _THRESHOLD)
            word = (word << 1) | bit
    raw = word.to_bytes(16, "big")
    payload, crc = raw[:12], struct.unpack(">I", raw[12:])[0]
    if zlib.crc32(payload) != crc:
        return None
    timestamp_ms, frame_no = _STAMP.unpack(payload)
    return int(timestamp_ms), int(frame_no)


# ---------------------------------------------------------------------------------------------
# the human-readable part


def draw_text(luma: Plane, text: str, x: int, y: int, digit_h: int, value: int = _WHITE) -> int:
    """Draw digits, '-', ':' and '.' as 7-segment glyphs; returns the x after the text."""
    dw = max(3, digit_h // 2)
    t = max(1, digit_h // 9)
    half = digit_h // 2
    h, w = luma.shape
    for ch in text:
        if x >= w:
            break
        if ch in ":.":
            dots = (y + digit_h - t,) if ch == "." else (y + half // 2, y + half + half // 2)
            for dy in dots:
                luma[dy:min(dy + t, h), x:min(x + t, w)] = value
            x += 3 * t
            continue
        segs = _SEGMENTS.get(ch, "")
        rects = {
            "a": (y, y + t, x, x + dw), "g": (y + half - t // 2, y + half - t // 2 + t, x, x + dw),
            "d": (y + digit_h - t, y + digit_h, x, x + dw),
            "f": (y, y + half, x, x + t), "b": (y, y + half, x + dw - t, x + dw),
            "e": (y + half, y + digit_h, x, x + t),
            "c": (y + half, y + digit_h, x + dw - t, x + dw),
        }
        for s in segs:
            y0, y1, x0, x1 = rects[s]
            luma[y0:min(y1, h), x0:min(x1, w)] = value
        x += dw + 2 * t
    return x


def _background(width: int, height: int) -> tuple[Plane, Plane, Plane]:
    y = np.full((height, width), _BLACK, np.uint8)
    u = np.full((height // 2, width // 2), 128, np.uint8)
    v = np.full((height // 2, width // 2), 128, np.uint8)
    top, bottom = height * STAMP_ROWS // GRID_ROWS, height * 2 // 3
    xs = _edges(width, len(_BARS))
    for i, (by, bu, bv) in enumerate(_BARS):
        y[top:bottom, xs[i]:xs[i + 1]] = by
        u[top // 2:bottom // 2, xs[i] // 2:xs[i + 1] // 2] = bu
        v[top // 2:bottom // 2, xs[i] // 2:xs[i + 1] // 2] = bv
    return y, u, v


def render_frame(
    width: int, height: int, timestamp_ms: int, frame_no: int, *, sweep_period_s: float = 2.0,
    background: tuple[Plane, Plane, Plane] | None = None,
) -> VideoFrame:
    """One test-pattern frame (yuv420p) stamped with `timestamp_ms` and `frame_no`."""
    if width % 2 or height % 2 or width < 64 or height < 48:
        raise ValueError(f"bot frame size must be even and at least 64×48 (got {width}×{height})")
    by, bu, bv = background or _background(width, height)
    buf = np.empty((height * 3 // 2, width), np.uint8)
    luma = buf[:height]
    luma[:] = by
    chroma = buf[height:].reshape(2, height // 2, width // 2)
    chroma[0], chroma[1] = bu, bv

    top, bottom = height * STAMP_ROWS // GRID_ROWS, height * 2 // 3
    bar_w = max(2, width // 40) & ~1
    phase = (timestamp_ms / 1000.0 / sweep_period_s) % 1.0
    x0 = int(phase * (width - bar_w)) & ~1
    luma[top:bottom, x0:x0 + bar_w] = _WHITE
    chroma[:, top // 2:bottom // 2, x0 // 2:(x0 + bar_w) // 2] = 128

    digit_h = max(9, (height - bottom) // 3)
    when = datetime.fromtimestamp(timestamp_ms / 1000.0, UTC)
    clock = when.strftime("%H:%M:%S.") + f"{timestamp_ms % 1000:03d}"
    margin = max(2, width // 64)
    gap = max(2, (height - bottom - 2 * digit_h) // 3)
    draw_text(luma, clock, margin, bottom + gap, digit_h)
    draw_text(luma, f"{frame_no % 100_000_000:08d}", margin, bottom + 2 * gap + digit_h, digit_h)
    draw_stamp(luma, timestamp_ms, frame_no)
    return VideoFrame.from_ndarray(buf, format="yuv420p")


# ---------------------------------------------------------------------------------------------
# tracks


class _Pacer:
    """Due times at a fixed rate on a monotonic clock; after a stall it skips ahead, no burst."""

    def __init__(self, interval_s: float, monotonic: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._monotonic = monotonic
        self.start: float | None = None
        self._due = 0.0

    async def next(self) -> float:
        """Wait for the next slot; returns its offset from the first slot in seconds."""
        now = self._monotonic()
        if self.start is None:
            self.start = self._due = now
            return 0.0
        self._due += self.interval_s
        if self._due < now - 2 * self.interval_s:
            self._due = now
        elif self._due > now:
            await asyncio.sleep(self._due - now)
        return self._due - self.start


class BotVideoTrack(MediaStreamTrack):
    """A moving, self-timestamped test pattern (see the module docstring)."""

    kind = "video"

    def __init__(
        self, width: int = 640, height: int = 480, fps: float = 20.0, *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not 1 <= fps <= 60:
            raise ValueError(f"bot fps must be between 1 and 60 (got {fps})")
        self.fps = fps
        self._wall_clock = wall_clock
        self._pacer = _Pacer(1.0 / fps, monotonic)
        self.frames_sent = 0
        self.last_stamp: tuple[int, int] | None = None  # (stamp ms, frame no) of the last frame
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Change the size from the next frame on (the encoder restarts with a keyframe)."""
        render_frame(width, height, 0, 0)  # validates the size
        self.width, self.height = width, height
        self._background = _background(width, height)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        offset = await self._pacer.next()
        stamp_ms = int(self._wall_clock() * 1000)
        frame = render_frame(
            self.width, self.height, stamp_ms, self.frames_sent, background=self._background
        )
        frame.pts = round(offset * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        self.last_stamp = (stamp_ms, self.frames_sent)
        self.frames_sent += 1
        return frame


class BotAudioTrack(MediaStreamTrack):
    """A continuous tone: 48 kHz mono s16, 20 ms frames, pts counted in samples."""

    kind = "audio"

    def __init__(
        self, frequency_hz: float = 440.0, amplitude: float = 0.2, *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.frequency_hz = frequency_hz
        self.amplitude = amplitude
        self.samples_per_frame = int(AUDIO_RATE * AUDIO_PTIME_S)
        self._pacer = _Pacer(AUDIO_PTIME_S, monotonic)
        self.frames_sent = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        offset = await self._pacer.next()
        # After a skip the pts jumps with the clock, so the receiver's jitter buffer sees a gap,
        # not audio squeezed in time.
        pts = round(offset * AUDIO_RATE)
        n = self.samples_per_frame
        t = (pts + np.arange(n)) / AUDIO_RATE
        wave = self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency_hz * t)
        frame = AudioFrame.from_ndarray(
            wave.astype(np.int16).reshape(1, n), format="s16", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        self.frames_sent += 1
        return frame


# ---------------------------------------------------------------------------------------------
# the receiving side


@dataclass
class LatencyProbe:
    """Reads stamps from received bot frames: end-to-end latency and frames lost on the way."""

    wall_clock: Callable[[], float] = time.time
    latencies_ms: list[float] = field(default_factory=list)
    frames_seen: int = 0
    frames_unreadable: int = 0
    frames_missing: int = 0
    _last_no: int | None = None

    def observe(self, frame: VideoFrame | npt.NDArray[np.uint8]) -> float | None:
        """Latency of this frame in ms (receive time minus stamp), or None if unreadable."""
        stamp = decode_stamp(frame)
        if stamp is None:
            self.frames_seen += 1
            self.frames_unreadable += 1
            return None
        return self.record(*stamp)

    def record(self, sent_ms: float, no: int) -> float:
        """A frame known to carry stamp (`sent_ms`, `no`) arrived; its latency in ms. For a
        receiver that identifies frames without decoding them (the capacity benchmark matches
        forwarded bitstreams byte for byte)."""
        self.frames_seen += 1
        if self._last_no is not None and no > self._last_no + 1:
            self.frames_missing += no - self._last_no - 1
        if self._last_no is None or no > self._last_no:
            self._last_no = no
        latency = self.wall_clock() * 1000.0 - sent_ms
        self.latencies_ms.append(latency)
        return latency

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    def summary(self) -> dict[str, float | int | None]:
        return {
            "frames_seen": self.frames_seen, "frames_unreadable": self.frames_unreadable,
            "frames_missing": self.frames_missing, "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95), "p99_ms": self.percentile(99),
        }
