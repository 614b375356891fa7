"""The media relay: each publisher's track fanned out to each subscriber, bounded everywhere.

Topology: forwarding (SFU-like), not mixing. The server decodes each publisher once (aiortc
always decodes) into a `TrackHub`; every subscriber leg has its own `RelayTrack` that takes the
*latest* frame from the hub it is bound to and is encoded once per subscriber. Cost per
participant pair is one VP8 encode (~5.5 ms/frame at 640x480 here), so a 2-party call costs
2 decodes + 2 encodes; an N-party room N decodes + N(N-1) encodes. Mixing would cost one
encode per subscriber but a composite decode-scale-blit per frame and a fixed layout; with
rooms of 2-6 people forwarding is cheaper and keeps each tile independent.

Why hubs and bindable relay tracks:
- A subscriber leg is bound to a hub, not to a browser connection: when the publisher's leg is
  rebuilt (reconnect), the hub is re-fed from the new input track and every subscriber keeps
  its connection; pts are restamped on a hub clock so the receivers' jitter buffers see one
  continuous stream.
- A subscriber's slot can be bound to a publisher before that publisher's media arrives, so a
  joiner's tiles light up as soon as its camera does, with no renegotiation.
- Queues are bounded: video keeps only the newest frame (a slow encoder skips frames instead
  of building latency and memory), audio keeps at most `AUDIO_QUEUE` frames.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_QUEUE = 10  # 200 ms of 20 ms frames: enough to ride out a busy loop, bounded latency
AUDIO_RESYNC_S = 0.2

Frame = av.VideoFrame | av.AudioFrame
FrameHook = Callable[[Frame], None]


class Subscription:
    """A bounded mailbox between one hub and one relay track (loop-thread only)."""

    def __init__(self, maxlen: int) -> None:
        self.frames: collections.deque[Frame] = collections.deque(maxlen=maxlen)
        self.event = asyncio.Event()
        self.dropped = 0

    def push(self, frame: Frame) -> None:
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(frame)
        self.event.set()



class TrackHub:
    """One publisher's media of one kind, fed by whichever input track is current."""

    def __init__(self, kind: str, name: str = "") -> None:
        self.kind = kind
        self.name = name
        self._subs: set[Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        self._current: HubInput | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = time.monotonic()
        self._next_audio_pts: int | None = None
        self.frames_in = 0
        self.last_frame_at: float | None = None
        self.size: tuple[int, int] | None = None
        self.on_frame: list[FrameHook] = []
        self.closed = False

    # -- fed by the publisher's leg ------------------------------------------------------
    def sink(self) -> HubInput:
        """A fresh MediaSink for one publish worker (streamlit-webrtc's `sink_*_track`)."""
        return HubInput(self)

    def _attach(self, hub_input: HubInput, track: MediaStreamTrack) -> None:
        """Loop thread: make `track` the hub's source, replacing any older one."""
        self._loop = asyncio.get_running_loop()
        if self._reader is not None:
            self._reader.cancel()
        self._current = hub_input
        self._next_audio_pts = None
        self._reader = asyncio.ensure_future(self._read(track))

    def _detach(self, hub_input: HubInput) -> None:
        # Only the input that is current may stop the reader: an old worker that stops late
        # must not cut off the leg that replaced it.
        if self._current is not hub_input:
            return
        self._current = None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                received = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            if not isinstance(received, (av.VideoFrame, av.AudioFrame)):
                continue  # encoded packets never reach a decoded input track
            frame = received
            self._restamp(frame)
            self.frames_in += 1
            if self.frames_in == 1:
                logger.debug("hub %s/%s: first frame in", self.name, self.kind)
            self.last_frame_at = time.monotonic()
            if isinstance(frame, av.VideoFrame):
                self.size = (frame.width, frame.height)
            for hook in self.on_frame:
                hook(frame)
            for sub in self._subs:
                sub.push(frame)

    def _restamp(self, frame: Frame) -> None:
        now = time.monotonic() - self._t0
        if isinstance(frame, av.VideoFrame):
            frame.pts = int(now * VIDEO_CLOCK)
            frame.time_base = VIDEO_TIME_BASE
            return
        rate = frame.sample_rate
        expected = int(now * rate)
        if self._next_audio_pts is None or abs(self._next_audio_pts - expected) > (
            AUDIO_RESYNC_S * rate
        ):
            self._next_audio_pts = expected
        frame.pts = self._next_audio_pts
        frame.time_base = fractions.Fraction(1, rate)
        self._next_audio_pts += frame.samples

    # -- read by subscriber legs ---------------------------------------------------------
    def subscribe(self, sub: Subscription) -> None:
        self._subs.add(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def live(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def seconds_since_frame(self) -> float | None:
        return None if self.last_frame_at is None else time.monotonic() - self.last_frame_at

    def close(self) -> None:
        self.closed = True
        if self._loop is not None and self._reader is not None:
            self._loop.call_soon_threadsafe(self._reader.cancel)
        self._subs.clear()


class HubInput:
    """streamlit-webrtc `MediaSink` for one publish worker; forwards to its hub."""

    def __init__(self, hub: TrackHub) -> None:
        self.hub = hub
        self._track: MediaStreamTrack | None = None

    def addTrack(self, track: MediaStreamTrack) -> None:  # noqa: N802 - MediaSink protocol
        self._track = track

    def hasTrack(self) -> bool:  # noqa: N802 - MediaSink protocol
        return self._track is not None

    def start(self) -> None:
        if self._track is not None:
            self.hub._attach(self, self._track)

    def stop(self) -> None:
        loop = self.hub._loop
        if loop is None:
            return
        if _on_loop(loop):
            self.hub._detach(self)
        else:
            loop.call_soon_threadsafe(self.hub._detach, self)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class RelayTrack(MediaStreamTrack):
    """What one subscriber receives of one kind: frames of the hub it is bound to.

    `transform` (e.g. the quality ladder's scaling, a fault's freeze/black effect) may replace
    or drop (return None) each video frame before it is encoded for this subscriber.
    """

    def __init__(self, kind: str, name: str = "") -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        self._sub = Subscription(1 if kind == "video" else AUDIO_QUEUE)
        self._hub: TrackHub | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transform: Callable[[Frame], Frame | None] | None = None
        self.on_frame: list[FrameHook] = []
        self.frames_out = 0
        self.last_frame_at: float | None = None

    @property
    def hub(self) -> TrackHub | None:
        return self._hub

    def bind(self, hub: TrackHub | None) -> None:
        """Switch to another publisher (or none); safe from any thread."""
        with self._lock:
            old, self._hub = self._hub, hub
        if old is hub:
            return

        def swap() -> None:
            if old is not None:
                old.unsubscribe(self._sub)
            self._sub.frames.clear()
            if hub is not None:
                hub.subscribe(self._sub)

        loop = self._loop or (hub._loop if hub else None) or (old._loop if old else None)
        if loop is None or _on_loop(loop):
            swap()
        else:
            loop.call_soon_threadsafe(swap)

    async def recv(self) -> Any:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            hub = self._hub
            if hub is not None:
                hub.subscribe(self._sub)
        while True:
            while not self._sub.frames:
                if self.readyState != "live":
                    raise MediaStreamError
                self._sub.event.clear()
                await self._sub.event.wait()
            frame = self._sub.frames.popleft()
            if self.transform is not None and isinstance(frame, av.VideoFrame):
                out = self.transform(frame)
                if out is None:
                    continue
                frame = out
            self.frames_out += 1
            if self.frames_out == 1:
                logger.debug("relay %s/%s: first frame out", self.name, self.kind)
            self.last_frame_at = time.monotonic()
            for hook in self.on_frame:
                hook(frame)
            return frame

    def stop(self) -> None:
        hub = self._hub
        if hub is not None:
            hub.unsubscribe(self._sub)
        # Wake a pending recv() so MediaRelay's reader (which never stops on its own) ends.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._sub.event.set)
        super().stop()
