"""Every private name of aiortc 1.16.0 the app relies on, and the two process-wide patches.

Pinned by tests/compat/test_private_names.py: an upgrade that moves one of these fails there
first. Callers elsewhere use only the functions below, never an aiortc underscore name.

Patches (installed by `videochat.compat.install`):

* `track_peer_connections`: wraps `RTCPeerConnection.__init__` to record every connection in a
  weak set, for the process-health sampler (scanning `gc.get_objects()` instead pauses the
  media loop in proportion to the heap).
* `end_remote_tracks_on_close`: makes `RTCPeerConnection.close()` end the tracks it received.
  aiortc ends a received track only through its receiver's decoder thread, which starts once
  the connection is up. A connection closed before that (a browser that left mid-ICE, a
  stalled connection housekeeping closes) left its tracks "live" with nothing ever to read, and
  every reader of them, MediaRelay's task or a hub's sink, waited for good (bench/soak.py found
  10 such relay tasks after 30 minutes). A second end-of-stream for a track that did start is
  harmless: after the first, recv() raises at once.

Accessors:

* `RTCRtpSender._handle_rtcp_packet` (looked up on the instance by the DTLS transport for each
  RTCP packet), `_ssrc`, and the last sender report `__lsr` / `__lsr_time`: the receiver-report
  hook of `videochat/call/rtcp.py`.
* `RTCRtpReceiver.__remote_streams` / `__rtx_ssrc`: inbound counters per SSRC without RTX, for
  `videochat/metrics/stats.py`.
* `RTCIceTransport._send` / `_recv` and `_connection` (the aioice `Connection`): the fault
  injector's DTLS/SRTP seam, `videochat/faults/injector.py`.
* `RemoteStreamTrack._queue`: the received frames, ended by `end_remote_tracks_on_close`.
* Forwarding (`videochat/media/relay.py`): `RTCRtpReceiver.__decoder_queue` (its `put` is where
  the jitter buffer hands over each reassembled frame: tapped for the encoded bytes, and the
  decoder fed only while someone needs decoded frames), `RTCRtpReceiver._send_rtcp_pli` (a PLI
  to the publisher; aiortc calls it itself after an unrepairable loss), `RTCRtpSender.
  _send_keyframe` (a subscriber's PLI/FIR, ignored by aiortc for packed frames) and
  `RelayStreamTrack._source` (from streamlit-webrtc's relayed input track to its receiver).
* `RTCRtpSender._retransmit` (called for each sequence number a NACK lists) and its
  `__rtp_history`: `throttle_retransmissions`, so that resends cannot swamp a full path.
* `MediaRelay._stop` and its proxies' `_queue` (replaced by a `NewestFrameQueue` for video):
  `BoundedMediaRelay`, the server-wide relay videochat/ui/webrtc.py installs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.contrib.media import MediaRelay, RelayStreamTrack
from aiortc.rtp import RTP_HISTORY_SIZE as _RTP_HISTORY_SIZE

RtcpHandler = Callable[[Any], Awaitable[None]]
logger = logging.getLogger(__name__)

# --- peer connections, counted -----------------------------------------------------------

# Each tracked connection -> when it was created (monotonic), to tell a stalled one apart.
_live_pcs: weakref.WeakKeyDictionary[RTCPeerConnection, float] = weakref.WeakKeyDictionary()
_hook_lock = threading.Lock()
_tracking = False
_ending_tracks = False


def track_peer_connections() -> None:
    """Record every `RTCPeerConnection` created from now on in a weak set (idempotent)."""
    global _tracking
    with _hook_lock:
        if _tracking:
            return
        original = RTCPeerConnection.__init__

        @functools.wraps(original)
        def __init__(self: RTCPeerConnection, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            _live_pcs[self] = time.monotonic()

        RTCPeerConnection.__init__ = __init__  # type: ignore[method-assign]
        _tracking = True


def peer_connections_tracked() -> bool:
    return _tracking


def tracked_peer_connections() -> list[tuple[RTCPeerConnection, float]]:
    """(connection, created at on the monotonic clock) for every one still referenced."""
    for _ in range(10):
        try:
            return list(_live_pcs.items())
        except RuntimeError:  # another thread added one while we copied: try again
            continue
    return []


def end_remote_tracks_on_close() -> None:
    """Make `RTCPeerConnection.close()` end the tracks it received (idempotent, process-wide)."""
    global _ending_tracks
    with _hook_lock:
        if _ending_tracks:
            return
        original = RTCPeerConnection.close

        @functools.wraps(original)
        async def close(self: RTCPeerConnection) -> None:
            await original(self)
            for transceiver in self.getTransceivers():
                track = transceiver.receiver.track
                queue = getattr(track, "_queue", None)  # RemoteStreamTrack's frame queue
                if track is not None and track.readyState == "live" and queue is not None:
                    queue.put_nowait(None)  # what the decoder thread sends at its end

        RTCPeerConnection.close = close  # type: ignore[method-assign]
        _ending_tracks = True


# --- RTCP of one sender ------------------------------------------------------------------

def rtcp_handler(sender: RTCRtpSender) -> RtcpHandler:
    handler: RtcpHandler = sender._handle_rtcp_packet
    return handler


def set_rtcp_handler(sender: RTCRtpSender, handler: RtcpHandler) -> None:
    """Override one sender's RTCP handler (an instance attribute: other senders keep theirs)."""
    setattr(sender, "_handle_rtcp_packet", handler)  # noqa: B010 - an instance override


def sender_ssrc(sender: RTCRtpSender) -> int:
    ssrc: int = sender._ssrc
    return ssrc


def last_sender_report(sender: RTCRtpSender) -> tuple[int | None, float | None]:
    """(middle NTP bits, wall-clock time) of the sender's last RTCP sender report, if any."""
    return (getattr(sender, "_RTCRtpSender__lsr", None),
            getattr(sender, "_RTCRtpSender__lsr_time", None))


# --- inbound streams of one receiver -----------------------------------------------------

def remote_streams(receiver: Any) -> tuple[dict[int, Any] | None, dict[int, Any]]:
    """(SSRC -> aiortc's inbound counters, RTX SSRC -> media SSRC) of a receiver.

    The first is None when aiortc no longer keeps them where 1.16 does.
    """
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    rtx_map = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {}) or {}
    return (streams if isinstance(streams, dict) else None), rtx_map


# --- the ICE transport's datagram seam ----------------------------------------------------

def is_ice_transport(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "_send")


def ice_io(ice: Any) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[bytes]]]:
    """The transport's own (send, receive) of DTLS/SRTP/SRTCP datagrams (not STUN)."""
    return ice._send, ice._recv


def set_ice_io(ice: Any, send: Callable[[bytes], Awaitable[None]],
               recv: Callable[[], Awaitable[bytes]]) -> None:
    ice._send = send
    ice._recv = recv


def ice_connection(ice: Any) -> Any | None:
    """The aioice `Connection` under an `RTCIceTransport` (None before it has one)."""
    return getattr(ice, "_connection", None)


# --- the server-wide media relay -------------------------------------------------------------

class NewestFrameQueue(asyncio.Queue[Any]):
    """A relay proxy's queue for video: the newest decoded frame only (a slow encoder skips
    frames instead of building latency), but encoded packets in order, up to `limit`: dropping
    one would break the chain of references, so an overflow drops to the next keyframe
    (`av.Packet.is_keyframe`) and calls `on_gap` (to ask the publisher for one)."""

    def __init__(self, limit: int = 8, on_gap: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.on_gap = on_gap
        self.dropped = 0
        self._skipping = False

    def _drain(self) -> None:
        while not self.empty():
            if self.get_nowait() is None:  # never swallow the end of the stream
                super().put_nowait(None)
                return
            self.dropped += 1

    def put_nowait(self, item: Any) -> None:
        if item is None or not isinstance(item, av.Packet):
            if item is not None:
                self._drain()
            self._skipping = False
            super().put_nowait(item)
            return
        if self._skipping and not item.is_keyframe:
            self.dropped += 1
            return
        self._skipping = False
        if self.qsize() >= self.limit:
            self._drain()
            if not item.is_keyframe:
                self.dropped += 1
                self._skipping = True
                if self.on_gap is not None:
                    self.on_gap()
                return
        super().put_nowait(item)


def _keyframe_requester(track: MediaStreamTrack) -> Callable[[], None] | None:
    """The `keyframe_requested` of the track a chain of relay proxies ends at, if it has one."""
    for _ in range(8):
        if not isinstance(track, RelayStreamTrack) or track._source is None:
            break
        track = track._source
    request = getattr(track, "keyframe_requested", None)
    return request if callable(request) else None


class BoundedMediaRelay(MediaRelay):
    """MediaRelay whose video consumers see only the newest decoded frame (bounded memory and
    latency) and every forwarded packet, in order (`NewestFrameQueue`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def subscribe(self, track: MediaStreamTrack, buffered: bool = True) -> MediaStreamTrack:
        proxy = super().subscribe(track, buffered=True)
        if track.kind == "video":
            proxy._queue = NewestFrameQueue(on_gap=_keyframe_requester(track))  # type: ignore[attr-defined]
        return proxy

    def _stop(self, proxy: Any) -> None:
        super()._stop(proxy)
        # aiortc never wakes a stopped proxy: a relay reader subscribed *to* it (streamlit-webrtc
        # relays its relayed source once more for the sender) would wait forever, holding the
        # proxy and its last frame — one task per rebuilt leg (bench/soak.py found 121-143 after
        # a 3-minute soak). End that recv(): it raises, and the reader task finishes.
        def wake() -> None:
            proxy._queue.put_nowait(None)  # every proxy of ours is buffered

        self._loop.call_soon_threadsafe(wake)


# --- encoded frames of a receiver, and keyframe requests (forwarding) ------------------------
# (codec name, bitstream, RTP timestamp) -> whether aiortc's decoder should get the frame too.
EncodedTap = Callable[[str, bytes, int], bool]


def receiver_of(track: MediaStreamTrack | None) -> Any | None:
    """The `RTCRtpReceiver` whose remote track `track` is (or relays: MediaRelay proxies are
    followed to their source), among the connections `track_peer_connections` records."""
    for _ in range(8):  # streamlit-webrtc relays a relayed track: follow a few proxies
        if not isinstance(track, RelayStreamTrack):
            break
        track = track._source
    if track is None:
        return None
    for pc, _created in tracked_peer_connections():
        for receiver in pc.getReceivers():
            if receiver.track is track:
                return receiver
    return None


def tap_encoded_frames(receiver: Any, tap: EncodedTap) -> Callable[[], None]:
    """Hand every frame the receiver's jitter buffer completes to `tap` before its decoder.

    The jitter buffer's output goes through `put` on the receiver's private decoder queue, on
    the event loop (`RTCRtpReceiver._handle_rtp_packet`); the decoder thread only `get`s from
    that queue, so overriding `put` on the instance works whether or not the thread has started.
    The stop signal (None) always goes through. Returns the undo."""
    queue = receiver._RTCRtpReceiver__decoder_queue
    original = type(queue).put.__get__(queue)

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            if not tap(codec.name, frame.data, frame.timestamp):
                return
        original(item, block, timeout)

    queue.put = put

    def untap() -> None:
        if queue.__dict__.get("put") is put:
            del queue.put

    return untap


def on_picture_loss(receiver: Any, callback: Callable[[], None]) -> None:
    """Call `callback` whenever aiortc itself asks the publisher for a keyframe: its jitter
    buffer dropped frames it could not repair, or its decoder failed. Frames forwarded after
    that refer to pictures the subscribers never got."""
    original = receiver._send_rtcp_pli

    async def send_pli(media_ssrc: int) -> None:
        callback()
        await original(media_ssrc)

    receiver._send_rtcp_pli = send_pli


def request_keyframe(receiver: Any) -> bool:
    """Send the publisher a PLI for its media SSRC (not RTX); False while none is known yet."""
    _streams, rtx_map = remote_streams(receiver)
    sources = sorted((s for s in receiver.getSynchronizationSources()
                      if s.source not in rtx_map), key=lambda s: s.timestamp)
    if not sources:
        return False
    # The class's method, not the instance's wrapper: our own request is not a loss.
    asyncio.ensure_future(RTCRtpReceiver._send_rtcp_pli(receiver, sources[-1].source))
    return True


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` when the subscriber asks this sender for a keyframe (PLI or FIR).
    aiortc only sets a flag its encoder reads: frames packed as they are ignore it, so the
    request must travel on to the publisher."""
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        callback()

    setattr(sender, "_send_keyframe", send_keyframe)  # noqa: B010 - an instance override


# --- retransmissions of one sender --------------------------------------------------------

RTX_OVERHEAD_BYTES = 40  # RTP + RTX headers, SRTP tag: what a resent packet adds to its payload
MAX_RESEND_BYTES = 1300 + RTX_OVERHEAD_BYTES  # aiortc's largest RTP payload, resent


class RetransmitThrottle:
    """Which NACKed packets a sender may resend: none twice within `min_gap_s()` (an RTT), and
    no more bytes than `budget_bps()` a second (None: no rate cap), in a bucket of
    `burst_s` of that rate.

    aiortc resends every sequence number of every NACK from its 128-packet history. Chrome
    repeats a NACK for a missing packet every RTT, up to 10 times, listing every packet still
    missing. On a path that drops because it is full (a 200 kbps downlink fed a 400-500 kbps
    stream), each resend is dropped too and asked for again: measured (bench/bandwidth.py,
    thin-200k), the leg's bytes out read 2-6.8 Mbps for 3-5 s after the cap began, ~500
    packets were resent in those seconds, audio behind them was 60-82 % concealed and video
    stood still. libwebrtc's sender bounds the same two things (a packet is not resent within
    an RTT of its last send; retransmissions are rate-limited)."""

    def __init__(self, budget_bps: Callable[[], float | None], min_gap_s: Callable[[], float],
                 *, burst_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_bps, self.min_gap_s, self.burst_s = budget_bps, min_gap_s, burst_s
        self.clock = clock
        self._sent: dict[int, float] = {}  # sequence number -> when last (re)sent by us
        self._tokens: float | None = None  # bytes; None until a budget is known
        self._at = clock()
        self.resent = 0
        self.skipped = 0

    def allow(self, seq: int, size: int) -> bool:
        now = self.clock()
        budget = self.budget_bps()
        if budget is not None:
            # The bucket holds one full packet at least: else a small budget never resends.
            rate, cap = budget / 8, max(budget / 8 * self.burst_s, MAX_RESEND_BYTES)
            tokens = cap if self._tokens is None else self._tokens
            self._tokens = min(cap, tokens + (now - self._at) * rate)
        else:
            self._tokens = None
        self._at = now
        last = self._sent.get(seq)
        if (last is not None and now - last < self.min_gap_s()) or (
                self._tokens is not None and self._tokens < size):
            self.skipped += 1
            return False
        if self._tokens is not None:
            self._tokens -= size
        if len(self._sent) > 4 * 128:  # the history holds 128: older entries cannot be resent
            horizon = now - 2.0
            self._sent = {s: t for s, t in self._sent.items() if t >= horizon}
        self._sent[seq] = now
        self.resent += 1
        return True


def throttle_retransmissions(sender: RTCRtpSender, throttle: RetransmitThrottle,
                             name: str = "") -> None:
    """Resend a NACKed packet only when `throttle` allows it (an instance override of the
    sender's `_retransmit`, which aiortc calls for each sequence number a NACK lists)."""
    if getattr(sender, "_vc_retransmit_throttle", None) is not None:
        return  # one throttle per sender: a second would count every resend twice
    setattr(sender, "_vc_retransmit_throttle", throttle)  # noqa: B010
    original = sender._retransmit
    history: dict[int, Any] = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]

    logged = [throttle.clock(), 0, 0]  # when, resent, skipped at the last log line

    async def retransmit(sequence_number: int) -> None:
        packet = history.get(sequence_number % _RTP_HISTORY_SIZE)
        if packet is None or packet.sequence_number != sequence_number:
            return  # aiortc has nothing to resend either
        if throttle.allow(sequence_number, len(packet.payload) + RTX_OVERHEAD_BYTES):
            await original(sequence_number)
        now = throttle.clock()
        if now - logged[0] >= 5.0 and throttle.skipped > logged[2]:
            logger.info("sender %s: %d NACKed packets resent, %d not (throttled) in %.1f s",
                        name, throttle.resent - logged[1], throttle.skipped - logged[2],
                        now - logged[0])
            logged[:] = [now, throttle.resent, throttle.skipped]

    setattr(sender, "_retransmit", retransmit)  # noqa: B010 - an instance override
