"""The media relay: each publisher's track fanned out to each subscriber, bounded everywhere.

Topology: forwarding (SFU-like), not mixing. A subscriber whose rung is the publisher's own
quality gets the publisher's *encoded* frames as they are (`EncodedFrame`: aiortc's sender packs
an `av.Packet` without encoding it): no decode, no encode. Only a subscriber on a lower rung (or
under a fault's freeze/black effect) gets decoded frames, scaled and encoded for it alone, and a
publisher is decoded only while at least one of its subscribers needs that. Measured before
forwarding (every subscriber transcoded): a 3-person call took 55 % of a core, VP8 encoding
1.7-2.1 ms a frame at 640x480; the sender's path for a packed frame is 0.04 ms.

How frames get out of aiortc: aiortc always decodes what it receives, so each hub taps its
receiver's jitter-buffer output before the decoder (`videochat.compat.aiortc.tap_encoded_frames`)
and decides per frame whether the decoder gets it. A hub fed by a local track (a bot's) has no
encoded frames: all its subscribers are transcoded, as before.

Keyframes (a forwarded subscriber must never see a frame whose references it missed: the
browser would show smeared pictures with no gap to notice):
- a forwarded subscriber gets nothing until a keyframe: when it is bound, when it switches from
  transcoded to forwarded, after its queue overflowed, and after the publisher's stream lost
  frames the jitter buffer could not repair (aiortc then sends a PLI itself; we gate);
- the hub asks the publisher for a keyframe (PLI) with one request outstanding at a time,
  repeated every `PLI_RETRY_S` while a subscriber still waits; a subscriber's own PLI is passed
  on to the publisher (aiortc ignores it for packed frames);
- the decoder, when switched on again, is fed from the next keyframe.

Why hubs and bindable relay tracks:
- A subscriber leg is bound to a hub, not to a browser connection: when the publisher's leg is
  rebuilt (reconnect), the hub is re-fed from the new input track and every subscriber keeps
  its connection; pts are restamped on a hub clock (encoded and decoded frames alike) so the
  receivers' jitter buffers see one continuous stream, across switches between forwarded and
  transcoded too.
- A subscriber's slot can be bound to a publisher before that publisher's media arrives, so a
  joiner's tiles light up as soon as its camera does, with no renegotiation.
- Queues are bounded: decoded video keeps only the newest frame (a slow encoder skips frames
  instead of building latency and memory), encoded video at most `ENCODED_QUEUE` frames (an
  overflow drops to the next keyframe), audio at most `AUDIO_QUEUE` frames.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from videochat.compat import aiortc as compat
from videochat.media.encoded import (
    FORWARDABLE_CODECS,
    EncodedFrame,
    opus_samples,
    vp8_keyframe_size,
)

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_CLOCK = 48_000
AUDIO_QUEUE = 10  # 200 ms of 20 ms frames: enough to ride out a busy loop, bounded latency
ENCODED_QUEUE = 4  # a packed frame costs 0.04 ms: a sender this far behind is stuck
AUDIO_RESYNC_S = 0.2
PLI_RETRY_S = 0.4  # no keyframe this long after a request: ask again (one outstanding)
KBPS_KEEP = 0.6  # of the smoothed bitrate per new second measured: follows within ~3 s

Frame = av.VideoFrame | av.AudioFrame
AnyFrame = av.VideoFrame | av.AudioFrame | EncodedFrame
FrameHook = Callable[[Any], None]
# How one subscriber gets a publisher's video: its encoded frames as they are, decoded and
# encoded again for it (a lower rung, a fault's effect), or nothing (audio-only).
Delivery = Literal["forwarded", "transcoded", "paused"]


def is_video(frame: Any) -> bool:
    """A video frame, decoded or still encoded (what hooks on hubs and relay tracks get)."""
    if isinstance(frame, EncodedFrame):
        return frame.kind == "video"
    return isinstance(frame, av.VideoFrame)


class Subscription:
    """A bounded mailbox between one hub and one relay track (loop-thread only).

    `encoded` subscriptions get the publisher's encoded frames; the others decoded frames."""

    def __init__(self, maxlen: int, *, encoded: bool = False) -> None:
        self.frames: collections.deque[Any] = collections.deque(maxlen=maxlen)
        self.event = asyncio.Event()
        self.dropped = 0
        self.encoded = encoded
        self.awaiting_keyframe = True
        self.started = False  # has had a keyframe since it was (re)subscribed
        self.gated = 0  # encoded frames withheld while waiting for a keyframe

    def push(self, frame: Any) -> None:
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(frame)
        self.event.set()

    def push_encoded(self, frame: EncodedFrame) -> bool:
        """Queue one encoded frame; True when this subscriber now needs a keyframe."""
        if frame.kind == "audio":  # every Opus packet stands alone
            self.push(frame)
            return False
        if frame.keyframe:
            self.awaiting_keyframe = False
            self.started = True
            if len(self.frames) == self.frames.maxlen:
                self.dropped += len(self.frames)
                self.frames.clear()
        elif self.awaiting_keyframe:
            self.gated += 1
            if self.started:
                self.dropped += 1
            return True
        elif len(self.frames) == self.frames.maxlen:
            # Dropping one would break the chain of references: drop to the next keyframe.
            self.dropped += len(self.frames) + 1
            self.frames.clear()
            self.awaiting_keyframe = True
            return True
        self.frames.append(frame)
        self.event.set()
        return False

    def set_encoded(self, encoded: bool, kind: str) -> None:
        self.encoded = encoded
        maxlen = AUDIO_QUEUE if kind == "audio" else (ENCODED_QUEUE if encoded else 1)
        self.frames = collections.deque(maxlen=maxlen)
        self.awaiting_keyframe = True


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
        self._next_encoded_audio_pts: int | None = None
        self._last_video_pts = -1
        self._receiver: Any | None = None
        self._untap: Callable[[], None] | None = None
        self._codec: str | None = None
        self._decoder_synced = False
        self._pli_sent_at: float | None = None
        self._last_rtp_ts: int | None = None  # of the last encoded video frame
        self._rate_bytes = 0  # encoded video bytes over `_rate_ticks` of media time
        self._rate_ticks = 0
        self.frames_in = 0
        self.decoded_in = 0  # frames aiortc decoded for transcoded subscribers
        self.keyframes_in = 0
        self.keyframe_requests = 0
        self.fps: float | None = None  # the publisher's frame rate (encoded video), smoothed
        # The publisher's encoded video bitrate, smoothed; None until a second of media has
        # been measured (see `_measure`).
        self.kbps: float | None = None
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
        self._next_audio_pts = self._next_encoded_audio_pts = None
        self._tap(track)
        self._reader = asyncio.ensure_future(self._read(track))

    def _tap(self, track: MediaStreamTrack) -> None:
        """Read the encoded frames of the receiver behind `track`, when there is one."""
        if self._untap is not None:
            self._untap()
            self._untap = None
        self._receiver = compat.receiver_of(track)
        self._codec = None
        self._decoder_synced = False
        self._pli_sent_at = None
        self._last_rtp_ts = None  # a new source starts its own timestamps
        self._rate_bytes = self._rate_ticks = 0
        if self._receiver is None:
            return
        self._untap = compat.tap_encoded_frames(self._receiver, self._on_encoded)
        compat.on_picture_loss(self._receiver, self._on_picture_loss)
        for sub in self._subs:  # everyone forwarded restarts on the new source's keyframe
            sub.awaiting_keyframe = True

    def _detach(self, hub_input: HubInput) -> None:
        # Only the input that is current may stop the reader: an old worker that stops late
        # must not cut off the leg that replaced it.
        if self._current is not hub_input:
            return
        self._current = None
        if self._untap is not None:
            self._untap()
            self._untap = None
        self._receiver = None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    @property
    def can_forward(self) -> bool:
        """Subscribers can get this publisher's encoded frames (a VP8/Opus remote track)."""
        return self._receiver is not None and (self._codec is None
                                               or self._codec in FORWARDABLE_CODECS)

    @property
    def decoding(self) -> bool:
        """Some subscriber needs decoded frames (or the frames cannot be forwarded)."""
        return self._receiver is None or any(not s.encoded for s in self._subs)

    def _on_encoded(self, codec: str, data: bytes, timestamp: int) -> bool:
        """aiortc's jitter buffer completed a frame (loop thread). Returns whether the decoder
        should get it too."""
        self._codec = codec
        if codec not in FORWARDABLE_CODECS:
            return True
        now = time.monotonic()
        video = self.kind == "video"
        if video:
            size = vp8_keyframe_size(data)
            if size is not None:
                self.size = size
                self.keyframes_in += 1
                self._pli_sent_at = None  # the request, if any, is answered
            pts = max(int((now - self._t0) * VIDEO_CLOCK), self._last_video_pts + 1)
            self._last_video_pts = pts
            frame = EncodedFrame.make("video", codec, data, pts, VIDEO_CLOCK, self.size, now)
            self._measure(timestamp, len(data))
        else:
            pts = self._encoded_audio_pts(now, opus_samples(data))
            frame = EncodedFrame.make("audio", codec, data, pts, AUDIO_CLOCK, None, now)
        self._arrived(frame, now)
        need_key = False
        for sub in self._subs:
            if sub.encoded and sub.push_encoded(frame):
                need_key = True
        decode = any(not s.encoded for s in self._subs)
        if video:
            if decode and not self._decoder_synced:
                # A decoder (re)started mid-stream only shows garbage until a keyframe.
                self._decoder_synced = frame.keyframe
                need_key = need_key or not frame.keyframe
            elif not decode:
                self._decoder_synced = False
            if need_key:
                self.request_keyframe()
            elif self._pli_sent_at is not None and now - self._pli_sent_at >= PLI_RETRY_S:
                self._pli_sent_at = None  # nobody waits any more
            return decode and self._decoder_synced
        return decode

    def _measure(self, rtp_ts: int, size: int) -> None:
        """The publisher's frame rate and bitrate from its RTP timestamps (the capture clock),
        not from arrival times: the jitter buffer releases frames in bursts (at the start,
        after a NACK repair), and a burst read from arrivals as 200 fps kept a new subscriber
        off the forwarded path (its rung "could not carry" the publisher's rate) for ~1.3 s,
        until the smoothed figure decayed, and then cost it a keyframe wait to switch back.

        The bitrate is what a forwarded subscriber's path must carry (the supervisor forwards
        only to a receiver whose estimate has room for it): bytes over at least a second of
        media time, so that one keyframe (several times a delta frame) does not read as a
        burst of bitrate, then smoothed over a few such windows."""
        last, self._last_rtp_ts = self._last_rtp_ts, rtp_ts
        if last is None:
            return
        ticks = (rtp_ts - last) % 2**32
        if not 0 < ticks < VIDEO_CLOCK:  # a second or more between frames is a pause, not a rate
            return
        rate = VIDEO_CLOCK / ticks
        self.fps = rate if self.fps is None else self.fps * 0.9 + rate * 0.1
        self._rate_bytes += size
        self._rate_ticks += ticks
        if self._rate_ticks >= VIDEO_CLOCK:
            kbps = self._rate_bytes * 8 * VIDEO_CLOCK / self._rate_ticks / 1000
            self.kbps = kbps if self.kbps is None else self.kbps * KBPS_KEEP + kbps * (
                1 - KBPS_KEEP)
            self._rate_bytes = self._rate_ticks = 0

    def _encoded_audio_pts(self, now: float, samples: int) -> int:
        expected = int((now - self._t0) * AUDIO_CLOCK)
        nxt = self._next_encoded_audio_pts
        if nxt is None or abs(nxt - expected) > AUDIO_RESYNC_S * AUDIO_CLOCK:
            nxt = expected
        self._next_encoded_audio_pts = nxt + samples
        return nxt

    def _on_picture_loss(self) -> None:
        """aiortc asked the publisher for a keyframe: frames were lost for good. Whatever is
        forwarded until that keyframe would refer to pictures nobody has."""
        self._pli_sent_at = time.monotonic()
        for sub in self._subs:
            if sub.encoded:
                sub.awaiting_keyframe = True

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe: one request outstanding, repeated after
        `PLI_RETRY_S` while someone still waits (each caller that waits calls again)."""
        receiver = self._receiver
        if receiver is None or self.kind != "video":
            return
        now = time.monotonic()
        if self._pli_sent_at is not None and now - self._pli_sent_at < PLI_RETRY_S:
            return
        if compat.request_keyframe(receiver):
            self._pli_sent_at = now
            self.keyframe_requests += 1

    def _arrived(self, frame: AnyFrame, now: float) -> None:
        self.frames_in += 1
        if self.frames_in == 1:
            logger.debug("hub %s/%s: first frame in", self.name, self.kind)
        self.last_frame_at = now
        for hook in self.on_frame:
            hook(frame)

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
            self.decoded_in += 1
            if self._receiver is None or not self.can_forward:
                # No encoded frames to count: the decoded ones are the publisher's frames.
                if isinstance(frame, av.VideoFrame):
                    self.size = (frame.width, frame.height)
                self._arrived(frame, time.monotonic())
            for sub in self._subs:
                if not sub.encoded:
                    sub.push(frame)

    def _restamp(self, frame: Frame) -> None:
        now = time.monotonic() - self._t0
        if isinstance(frame, av.VideoFrame):
            pts = max(int(now * VIDEO_CLOCK), self._last_video_pts + 1)
            self._last_video_pts = pts
            frame.pts = pts
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
        if sub.encoded and self.kind == "video":
            sub.awaiting_keyframe = True  # a new subscriber starts on a keyframe
            sub.started = False
            self.request_keyframe()

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
        if self._untap is not None:
            self._untap()
            self._untap = None
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

    `route` (the supervisor's `SubscriberView.delivery`) says per frame whether this subscriber
    is forwarded, transcoded or paused; without one, a track is forwarded whenever its hub can
    forward and it has no `transform`. `transform` (the quality ladder's scaling, a fault's
    freeze/black effect) may replace or drop (return None) each decoded video frame before it
    is encoded for this subscriber.
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
        self.route: Callable[[], Delivery] | None = None
        self.delivery: Delivery = "transcoded"
        self.on_frame: list[FrameHook] = []
        self.frames_out = 0
        self.forwarded_out = 0
        self.last_frame_at: float | None = None
        self._last_pts: int | None = None
        self._bound_at: float | None = time.monotonic()
        # seconds from each bind (or switch to forwarded) to the first frame out
        self.first_frame_delays: collections.deque[float] = collections.deque(maxlen=64)
        # seconds from a forwarded frame's arrival at the server to its sender taking it
        self.relay_delays: collections.deque[float] = collections.deque(maxlen=512)

    @property
    def hub(self) -> TrackHub | None:
        return self._hub

    def bind(self, hub: TrackHub | None) -> None:
        """Switch to another publisher (or none); safe from any thread."""
        with self._lock:
            old, self._hub = self._hub, hub
        if old is hub:
            return
        self._bound_at = time.monotonic() if hub is not None else None

        def swap() -> None:
            if old is not None:
                old.unsubscribe(self._sub)
            self._sub.frames.clear()
            self._update_delivery()  # before subscribing: a forwarded one needs no decoder
            if hub is not None:
                hub.subscribe(self._sub)

        loop = self._loop or (hub._loop if hub else None) or (old._loop if old else None)
        if loop is None or _on_loop(loop):
            swap()
        else:
            loop.call_soon_threadsafe(swap)

    def keyframe_requested(self) -> None:
        """The subscriber asked for a keyframe (its PLI): only the publisher can send one
        while this track is forwarded; a transcoded track's encoder makes its own."""
        hub = self._hub
        if hub is not None and self._sub.encoded:
            hub.request_keyframe()

    def _wanted(self, hub: TrackHub | None) -> Delivery:
        if hub is None or not hub.can_forward:
            return "transcoded"
        if self.route is not None:
            return self.route()
        return "forwarded" if self.transform is None else "transcoded"

    def _update_delivery(self) -> None:
        hub = self._hub
        wanted = self._wanted(hub)
        if wanted == self.delivery:
            return
        old, self.delivery = self.delivery, wanted
        encoded = wanted != "transcoded"
        if encoded != self._sub.encoded:
            self._sub.set_encoded(encoded, self.kind)
        if wanted == "forwarded" and self.kind == "video" and hub is not None:
            self._sub.awaiting_keyframe = True  # from transcoded or paused: start clean
            self._bound_at = time.monotonic()
            hub.request_keyframe()
        logger.debug("relay %s/%s: %s -> %s", self.name, self.kind, old, wanted)

    async def recv(self) -> Any:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._update_delivery()
            hub = self._hub
            if hub is not None:
                hub.subscribe(self._sub)
        while True:
            self._update_delivery()
            sub = self._sub
            while not sub.frames:
                if self.readyState != "live":
                    raise MediaStreamError
                sub.event.clear()
                await sub.event.wait()
                self._update_delivery()
                sub = self._sub
            frame = sub.frames.popleft()
            if isinstance(frame, EncodedFrame):
                if self.delivery == "paused" and frame.kind == "video":
                    sub.awaiting_keyframe = True
                    continue
                if self._last_pts is not None and frame.pts <= self._last_pts:
                    frame = frame.restamped(self._last_pts + 1)
                out: Any = frame.packet
                self.forwarded_out += 1
                self.relay_delays.append(time.monotonic() - frame.arrived_at)
            else:
                if self.transform is not None and isinstance(frame, av.VideoFrame):
                    transformed = self.transform(frame)
                    if transformed is None:
                        continue
                    frame = transformed
                if self._last_pts is not None and frame.pts is not None \
                        and frame.pts <= self._last_pts:
                    frame.pts = self._last_pts + 1
                out = frame
            self._last_pts = int(out.pts) if out.pts is not None else self._last_pts
            now = time.monotonic()
            self.frames_out += 1
            if self.frames_out == 1:
                logger.debug("relay %s/%s: first frame out", self.name, self.kind)
            if self._bound_at is not None:
                self.first_frame_delays.append(now - self._bound_at)
                self._bound_at = None
            self.last_frame_at = now
            for hook in self.on_frame:
                hook(frame)
            return out

    def stop(self) -> None:
        hub = self._hub
        if hub is not None:
            hub.unsubscribe(self._sub)
        # Wake a pending recv() so MediaRelay's reader (which never stops on its own) ends.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._sub.event.set)
        super().stop()
