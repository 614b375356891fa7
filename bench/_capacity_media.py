"""The client half of the capacity benchmark: participants as real aiortc send and receive legs.

Every participant has one SENDONLY publish connection into the server and one RECVONLY
connection per other participant in its room, as a browser tab does in the app. What it sends
is a `BotVideoTrack` (burnt-in wall-clock stamp and frame counter) and a `BotAudioTrack` tone.

Why the client encodes once for everybody: the server's cost per participant is one VP8 decode
and one VP8 encode per subscriber; if the client encoded every publisher itself, the client core
would spend as much on encoding as the server does and saturate first, and the benchmark would
measure the client. So one `SharedEncoder` per kind encodes the bot media once and hands the
same packets to every publish leg (aiortc sends pre-encoded `av.Packet`s as they are). Each
publish leg's keyframe requests (PLI/FIR from the server's decoder) reach that shared encoder.
The receiving side reads every frame's stamp: a gap in the frame counter is a frame lost
somewhere on the way (in practice: skipped by the relay because the server's encoder for that
subscriber fell behind), the stamp's age is the end-to-end latency through the relay. A
forwarded frame arrives as the very bytes the shared encoder produced, so it is recognised by
its bitstream (`SharedEncoder.stamp_of`) and never decoded; only frames the server encoded
itself (transcoded legs) go through aiortc's decoder and the burnt-in stamp. Decoding every
forwarded frame would make the client, not the server, the first to run out of CPU.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from videochat.compat import aiortc as compat
from videochat.media.bot_tracks import BotAudioTrack, BotVideoTrack, LatencyProbe

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48_000)
VIDEO_BITRATE = 500_000  # aiortc's default VP8 rate: what the server's own encoders start at
KEYFRAME_MIN_GAP_S = 0.3  # many legs may ask at once after a hiccup: one keyframe serves all
SENT_REMEMBERED = 400  # frames whose bitstream is known by heart: 20 s at 20 fps
SEND_QUEUE = {"video": 30, "audio": 50}


class PacketTrack(MediaStreamTrack):
    """One publish leg's view of a shared encoder: pre-encoded packets, bounded queue."""

    def __init__(self, kind: str, owner: SharedEncoder) -> None:
        super().__init__()
        self.kind = kind
        self._owner = owner
        self._queue: collections.deque[av.Packet[Any]] = collections.deque(maxlen=SEND_QUEUE[kind])
        self._event = asyncio.Event()
        self.dropped = 0

    def push(self, packet: av.Packet[Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the client fell behind: reported, never blamed on the server
        self._queue.append(packet)
        self._event.set()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        self._owner.legs.discard(self)
        self._event.set()
        super().stop()


class SharedEncoder:
    """Pulls a bot track, encodes each frame once, pushes the packets to every leg."""

    def __init__(self, kind: str, width: int = 640, height: int = 480, fps: float = 20.0) -> None:
        self.kind = kind
        self.legs: set[PacketTrack] = set()
        self.frames = 0
        # bitstream of each recent video frame -> its bot stamp (ms, frame no)
        self._sent: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        self._want_keyframe = True
        self._last_keyframe = 0.0
        self._task: asyncio.Task[None] | None = None
        self.source: MediaStreamTrack
        if kind == "video":
            self.source = BotVideoTrack(width, height, fps)
            codec = av.CodecContext.create("libvpx", "w")
            codec.width, codec.height = width, height
            codec.bit_rate = VIDEO_BITRATE
            codec.pix_fmt = "yuv420p"
            codec.time_base = VIDEO_TIME_BASE
            codec.gop_size = 3000
            codec.qmin, codec.qmax = 2, 56
            # aiortc's own Vp8Encoder settings (a browser's realtime encoder is similar)
            codec.options = {
                "bufsize": str(VIDEO_BITRATE), "cpu-used": "-6", "deadline": "realtime",
                "lag-in-frames": "0", "minrate": str(VIDEO_BITRATE),
                "maxrate": str(VIDEO_BITRATE), "noise-sensitivity": "4",
                "overshoot-pct": "15", "partitions": "0", "static-thresh": "1",
                "undershoot-pct": "100",
            }
            codec.thread_count = 1
            self._video = codec
        else:
            self.source = BotAudioTrack()
            self._opus = OpusEncoder()

    def add_leg(self) -> PacketTrack:
        leg = PacketTrack(self.kind, self)
        self.legs.add(leg)
        self.request_keyframe()  # the new leg's receiver can only start on a keyframe
        return leg

    def request_keyframe(self) -> None:
        self._want_keyframe = True

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self.source.stop()
        for leg in list(self.legs):
            leg.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self.source.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame):
                stamp = getattr(self.source, "last_stamp", None)
                now = time.monotonic()
                key = self._want_keyframe and now - self._last_keyframe >= KEYFRAME_MIN_GAP_S
                if key:
                    self._want_keyframe = False
                    self._last_keyframe = now
                packets = await loop.run_in_executor(None, self._encode_video, frame, key)
                if stamp is not None and len(packets) == 1:
                    self._remember(bytes(packets[0]), stamp)
            elif isinstance(frame, av.AudioFrame):
                packets = self._encode_audio(frame)
            else:
                continue
            self.frames += 1
            for packet in packets:
                for leg in list(self.legs):
                    leg.push(packet)

    def _remember(self, data: bytes, stamp: tuple[int, int]) -> None:
        self._sent[data] = stamp
        while len(self._sent) > SENT_REMEMBERED:
            self._sent.popitem(last=False)

    def stamp_of(self, data: bytes) -> tuple[int, int] | None:
        """The stamp of a frame this encoder produced, if `data` is its bitstream unchanged."""
        return self._sent.get(data)

    def _encode_video(self, frame: av.VideoFrame, key: bool) -> list[av.Packet[Any]]:
        if key:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(self._video.encode(frame))
        for p in packets:
            p.pts, p.time_base = frame.pts, VIDEO_TIME_BASE
        return packets

    def _encode_audio(self, frame: av.AudioFrame) -> list[av.Packet[Any]]:
        packets: list[av.Packet[Any]] = []
        for f in self._opus.resampler.resample(frame):
            packets += self._opus.codec.encode(f)
        for p in packets:
            p.time_base = AUDIO_TIME_BASE
        return packets


def _prefer(kind: str, mime: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind)
    return [c for c in caps.codecs if c.mimeType in (mime, f"{kind}/rtx")]


class Control:
    """The signalling connection to the server process (one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()

    async def call(self, op: str, timeout_s: float = 30.0, **kw: Any) -> dict[str, Any]:
        async with self._lock:
            self._writer.write(json.dumps({"op": op, **kw}).encode() + b"\n")
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), timeout_s)
        if not line:
            raise ConnectionError("capacity server closed the control connection")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"server: {op}: {reply['error']}")
        return reply

    def close(self) -> None:
        self._writer.close()


@dataclass
class ReceiveLeg:
    """One participant receiving one other participant (a slot's connection)."""

    owner: str
    publisher: str
    pc: RTCPeerConnection
    probe: LatencyProbe = field(default_factory=LatencyProbe)
    audio_frames: int = 0
    decoded_frames: int = 0  # video frames that needed aiortc's decoder (not forwarded bytes)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def snapshot(self) -> tuple[int, int, int, int, int, int]:
        p = self.probe
        return (p.frames_seen, p.frames_missing, p.frames_unreadable, len(p.latencies_ms),
                self.audio_frames, self.decoded_frames)


@dataclass
class ClientParticipant:
    name: str
    room: str
    pid: str
    publish_pc: RTCPeerConnection | None = None
    legs: list[ReceiveLeg] = field(default_factory=list)
    tracks: list[PacketTrack] = field(default_factory=list)


async def _negotiate(pc: RTCPeerConnection, control: Control, op: str, **kw: Any) -> None:
    await pc.setLocalDescription(await pc.createOffer())
    reply = await control.call(op, sdp=pc.localDescription.sdp, type=pc.localDescription.type,
                               **kw)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type=reply["type"]))


async def publish(me: ClientParticipant, control: Control, video: SharedEncoder,
                  audio: SharedEncoder) -> None:
    pc = RTCPeerConnection()
    me.publish_pc = pc
    for enc, mime in ((video, "video/VP8"), (audio, "audio/opus")):
        track = enc.add_leg()
        me.tracks.append(track)
        tr = pc.addTransceiver(track, direction="sendonly")
        tr.setCodecPreferences(_prefer(enc.kind, mime))
        # aiortc sends pre-encoded packets as they are, so the server's keyframe requests
        # must reach the shared encoder (the sender's own flag only affects raw frames).
        sender_hook: Callable[[], None] = enc.request_keyframe
        tr.sender._send_keyframe = sender_hook  # type: ignore[method-assign]
    await _negotiate(pc, control, "publish", pid=me.pid)


async def subscribe(me: ClientParticipant, publisher: ClientParticipant,
                    control: Control, video: SharedEncoder | None = None) -> ReceiveLeg:
    """A receive leg; with `video` (the encoder every publisher of this process sends),
    forwarded frames are told by their bytes instead of being decoded."""
    pc = RTCPeerConnection()
    leg = ReceiveLeg(me.name, publisher.name, pc)
    me.legs.append(leg)
    video_tr = pc.addTransceiver("video", direction="recvonly")
    video_tr.setCodecPreferences(_prefer("video", "video/VP8"))
    audio_tr = pc.addTransceiver("audio", direction="recvonly")
    if video is not None:
        def tap(_codec: str, data: bytes, _timestamp: int) -> bool:
            stamp = video.stamp_of(data)
            if stamp is None:
                leg.decoded_frames += 1
                return True  # the server's own encoding: decode it and read the stamp
            leg.probe.record(*stamp)
            return False

        def count_audio(_codec: str, _data: bytes, _timestamp: int) -> bool:
            # Counted, not decoded: each decoded frame also wakes aiortc's decoder thread,
            # 50 times a second per leg, which cost the clients more than the server.
            leg.audio_frames += 1
            return False

        compat.tap_encoded_frames(video_tr.receiver, tap)
        compat.tap_encoded_frames(audio_tr.receiver, count_audio)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        leg.tasks.append(asyncio.ensure_future(_read(leg, track)))

    await _negotiate(pc, control, "subscribe", pid=me.pid, publisher=publisher.pid)
    return leg


async def _read(leg: ReceiveLeg, track: MediaStreamTrack) -> None:
    while True:
        try:
            frame = await track.recv()
        except (MediaStreamError, asyncio.CancelledError):
            return
        if isinstance(frame, av.VideoFrame):
            leg.probe.observe(frame)
        else:
            leg.audio_frames += 1


async def close_participant(me: ClientParticipant) -> None:
    for track in me.tracks:
        track.stop()
    pcs = [leg.pc for leg in me.legs] + ([me.publish_pc] if me.publish_pc else [])
    for leg in me.legs:
        for task in leg.tasks:
            task.cancel()
    await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
