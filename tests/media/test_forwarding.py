"""Forwarding: a subscriber on the publisher's own quality gets its encoded frames as they are.

Real aiortc peer connections on 127.0.0.1 through our hubs and relay tracks. The "browsers" are
aiortc connections too: the publisher sends pre-encoded VP8 (a keyframe only at its start and
when asked, as a browser does), and each subscriber's receiver is tapped (the same compat hook
the server uses) to read the bitstreams that arrive before they are decoded.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.codecs import vpx
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from videochat.compat import aioice as ice
from videochat.compat import aiortc as compat
from videochat.media.encoded import EncodedFrame, vp8_keyframe_size
from videochat.media.participant import Participant, Slot
from videochat.media.relay import PLI_RETRY_S, RelayTrack, Subscription, TrackHub

VIDEO_TB = fractions.Fraction(1, 90_000)


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    ice.restrict_host_addresses(["127.0.0.1"])
    compat.track_peer_connections()  # what compat.install() does in the app
    yield
    ice.restrict_host_addresses([])


class EncodedCamera(MediaStreamTrack):
    """A publisher's camera, encoded on its side: a keyframe at the start and on request."""

    kind = "video"

    def __init__(self, size: tuple[int, int] = (160, 120), fps: float = 20.0) -> None:
        super().__init__()
        self.codec = av.CodecContext.create("libvpx", "w")
        self.codec.width, self.codec.height = size
        self.codec.pix_fmt = "yuv420p"
        self.codec.time_base = VIDEO_TB
        self.codec.gop_size = 100_000
        self.codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        self.size, self.interval = size, 1.0 / fps
        self.sent: list[bytes] = []
        self.keyframes_sent = 0
        self.keyframe_requests = 0
        self._want_key = True
        self._n = 0
        self._pending: list[av.Packet[Any]] = []

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._want_key = True

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._pending:
            await asyncio.sleep(self.interval)
            w, h = self.size
            img = np.full((h, w, 3), (self._n * 7) % 256, dtype=np.uint8)
            img[: h // 2, : w // 2] = (self._n * 13) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = int(self._n * self.interval * 90_000), VIDEO_TB
            if self._want_key:
                frame.pict_type = av.video.frame.PictureType.I
                self._want_key = False
            self._n += 1
            self._pending = list(self.codec.encode(frame))
        packet = self._pending.pop(0)
        packet.pts, packet.time_base = int(self._n * self.interval * 90_000), VIDEO_TB
        data = bytes(packet)
        self.sent.append(data)
        self.keyframes_sent += vp8_keyframe_size(data) is not None
        return packet


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection,
                  before_answer: Callable[[], None] | None = None) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    if before_answer is not None:
        before_answer()
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


class Publisher:
    def __init__(self, me: Participant, camera: MediaStreamTrack,
                 audio: MediaStreamTrack | None = None) -> None:
        self.me, self.camera, self.audio = me, camera, audio
        self.browser, self.server = RTCPeerConnection(), RTCPeerConnection()

    async def start(self) -> None:
        sender = self.browser.addTrack(self.camera)
        if isinstance(self.camera, EncodedCamera):
            # A browser answers PLI with a keyframe; aiortc's sender does so only when encoding.
            compat.on_keyframe_request(sender, self.camera.request_keyframe)
        if self.audio is not None:
            self.browser.addTrack(self.audio)

        @self.server.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            hub = self.me.video_hub if track.kind == "video" else self.me.audio_hub
            sink = hub.sink()
            sink.addTrack(track)
            sink.start()

        await connect(self.browser, self.server)

    async def close(self) -> None:
        await self.browser.close()
        await self.server.close()


class Subscriber:
    """A receive-only 'browser' for one slot; records the bitstreams reaching its receivers."""

    def __init__(self, slot: Slot, audio: bool = False) -> None:
        self.slot, self.audio = slot, audio
        self.browser, self.server = RTCPeerConnection(), RTCPeerConnection()
        self.video_frames: list[bytes] = []
        self.audio_frames: list[bytes] = []

    async def start(self) -> None:
        self.browser.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.browser.addTransceiver("audio", direction="recvonly")
        for transceiver in self.browser.getTransceivers():
            receiver = transceiver.receiver
            store = self.video_frames if transceiver.kind == "video" else self.audio_frames

            def tap(codec: str, data: bytes, ts: int, store: list[bytes] = store) -> bool:
                store.append(data)
                return False  # nobody reads the decoded frames here

            compat.tap_encoded_frames(receiver, tap)

        def add_tracks() -> None:
            sender = self.server.addTrack(self.slot.video)
            compat.on_keyframe_request(sender, self.slot.video.keyframe_requested)
            if self.audio:
                self.server.addTrack(self.slot.audio)

        await connect(self.browser, self.server, add_tracks)

    def request_keyframe(self) -> bool:
        """What a browser does when its picture is broken: a PLI to the server."""
        video = next(t for t in self.browser.getTransceivers() if t.kind == "video")
        return compat.request_keyframe(video.receiver)

    async def close(self) -> None:
        await self.browser.close()
        await self.server.close()


async def wait_until(what: Callable[[], bool], timeout_s: float = 15.0,
                     label: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {label}")
        await asyncio.sleep(0.05)


@pytest.fixture
def no_server_encoding(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every VP8 encode aiortc does in this process (only the server's senders could)."""
    calls: list[int] = []
    original = vpx.Vp8Encoder.encode

    def encode(self: Any, frame: Any, force_keyframe: bool = False) -> Any:
        calls.append(1)
        return original(self, frame, force_keyframe)

    monkeypatch.setattr(vpx.Vp8Encoder, "encode", encode)
    return calls


def test_forwarded_frames_are_the_publishers_own_packets(no_server_encoding: list[int]) -> None:
    async def main() -> None:
        ana, bob = Participant("r", "ana"), Participant("r", "bob")
        slot = bob.free_slot()
        slot.bind(ana)
        camera = EncodedCamera()
        pub, sub = Publisher(ana, camera), Subscriber(slot)
        await sub.start()
        await pub.start()
        await wait_until(lambda: len(sub.video_frames) >= 30, label="30 forwarded frames")
        # Every frame arrived bit for bit as the publisher encoded it, starting on a keyframe.
        assert set(sub.video_frames) <= set(camera.sent)
        assert vp8_keyframe_size(sub.video_frames[0]) is not None
        # ...in order, none skipped after the first (a forwarded stream cannot skip one).
        start = camera.sent.index(sub.video_frames[0])
        assert sub.video_frames == camera.sent[start:start + len(sub.video_frames)]
        assert no_server_encoding == []  # no encode on the server
        assert ana.video_hub.decoded_in == 0 and not ana.video_hub.decoding  # no decode
        assert slot.video.delivery == "forwarded"
        assert ana.video_hub.size == camera.size
        await sub.close()
        await pub.close()
        ana.close()
        bob.close()

    asyncio.run(main())


def test_a_late_subscriber_waits_for_a_keyframe_it_asked_the_publisher_for() -> None:
    async def main() -> None:
        ana, bob = Participant("r", "ana"), Participant("r", "bob")
        camera = EncodedCamera()
        pub = Publisher(ana, camera)
        await pub.start()
        await wait_until(lambda: ana.video_hub.frames_in >= 20, label="publisher media")
        assert camera.keyframes_sent == 1  # nobody needed another one yet
        slot = bob.free_slot()
        slot.bind(ana)  # joins mid-stream: the frames now in flight are deltas
        sub = Subscriber(slot)
        await sub.start()
        await wait_until(lambda: len(sub.video_frames) >= 10, label="frames to the late joiner")
        assert camera.keyframe_requests >= 1 and camera.keyframes_sent >= 2
        # Nothing was forwarded before that keyframe: no smeared first picture.
        assert vp8_keyframe_size(sub.video_frames[0]) is not None
        assert slot.video.first_frame_delays  # bind -> first frame, for the benchmark
        await sub.close()
        await pub.close()
        ana.close()
        bob.close()

    asyncio.run(main())


def test_a_subscribers_keyframe_request_reaches_the_publisher() -> None:
    async def main() -> None:
        ana, bob = Participant("r", "ana"), Participant("r", "bob")
        slot = bob.free_slot()
        slot.bind(ana)
        camera = EncodedCamera()
        pub, sub = Publisher(ana, camera), Subscriber(slot)
        await sub.start()
        await pub.start()
        await wait_until(lambda: len(sub.video_frames) >= 10, label="first frames")
        before = camera.keyframes_sent
        await asyncio.sleep(PLI_RETRY_S)  # past any request still outstanding from the join
        assert sub.request_keyframe()
        await wait_until(lambda: camera.keyframes_sent > before, label="a keyframe")
        await wait_until(lambda: any(vp8_keyframe_size(d) for d in sub.video_frames[10:]),
                         label="the keyframe forwarded to the subscriber")
        await sub.close()
        await pub.close()
        ana.close()
        bob.close()

    asyncio.run(main())


def test_only_a_lower_rung_is_transcoded_and_decoding_stops_with_it() -> None:
    async def main() -> None:
        ana, bob, cy = Participant("r", "ana"), Participant("r", "bob"), Participant("r", "cy")
        fwd_slot, low_slot = bob.free_slot(), cy.free_slot()
        fwd_slot.bind(ana)
        low_slot.bind(ana)
        route = {"now": "transcoded"}
        low_slot.video.route = lambda: route["now"]  # type: ignore[assignment,return-value]
        camera = EncodedCamera()
        pub = Publisher(ana, camera)
        fwd, low = Subscriber(fwd_slot), Subscriber(low_slot)
        for leg in (fwd, low, pub):
            await leg.start()
        await wait_until(lambda: len(low.video_frames) >= 10 and len(fwd.video_frames) >= 10,
                         label="both subscribers")
        hub = ana.video_hub
        assert hub.decoding and hub.decoded_in > 0
        assert low_slot.video.delivery == "transcoded" and fwd_slot.video.delivery == "forwarded"
        assert not set(low.video_frames) & set(camera.sent)  # re-encoded by the server
        assert set(fwd.video_frames) <= set(camera.sent)
        # The rung climbs back to the publisher's quality: forwarded from a keyframe on, and
        # nobody needs the decoder any more.
        route["now"] = "forwarded"
        mark = len(low.video_frames)
        await wait_until(lambda: len(low.video_frames) >= mark + 10, label="forwarded frames")
        switched = low.video_frames[mark:]
        first = next(i for i, d in enumerate(switched) if d in set(camera.sent))
        assert vp8_keyframe_size(switched[first]) is not None
        assert set(switched[first:]) <= set(camera.sent)
        assert not hub.decoding
        decoded = hub.decoded_in
        await asyncio.sleep(0.5)
        assert hub.decoded_in <= decoded + 2  # what was already in the decoder's queue
        for leg in (fwd, low, pub):
            await leg.close()
        for p in (ana, bob, cy):
            p.close()

    asyncio.run(main())


def test_audio_is_forwarded_without_decoding() -> None:
    async def main() -> None:
        ana, bob = Participant("r", "ana"), Participant("r", "bob")
        slot = bob.free_slot()
        slot.bind(ana)
        arrived: list[bytes] = []
        ana.audio_hub.on_frame.append(
            lambda f: arrived.append(bytes(f.packet)) if isinstance(f, EncodedFrame) else None)
        pub = Publisher(ana, EncodedCamera(), AudioStreamTrack())
        sub = Subscriber(slot, audio=True)
        await sub.start()
        await pub.start()
        await wait_until(lambda: len(sub.audio_frames) >= 25, label="forwarded audio")
        assert set(sub.audio_frames) <= set(arrived)  # Opus packets as the publisher sent them
        assert ana.audio_hub.decoded_in == 0 and slot.audio.delivery == "forwarded"
        await sub.close()
        await pub.close()
        ana.close()
        bob.close()

    asyncio.run(main())


# -------------------------------------------------------------- keyframe gating, without a network
KEY = b"\x00\x00\x00\x9d\x01\x2a\xa0\x00\x78\x00" + b"k" * 20  # a VP8 keyframe header, 160x120
DELTA = b"\x01\x00\x00" + b"d" * 20


def test_forwarding_waits_for_a_keyframe_after_a_loss_and_requests_are_throttled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        sent: list[float] = []
        monkeypatch.setattr(compat, "request_keyframe",
                            lambda receiver: sent.append(time.monotonic()) or True)
        hub = TrackHub("video", "ana")
        hub._receiver = object()  # as if tapped on a publisher's receiver
        sub = Subscription(4, encoded=True)
        hub.subscribe(sub)
        assert len(sent) == 1  # a new subscriber asks for a keyframe
        for _ in range(5):
            hub._on_encoded("VP8", DELTA, 0)
        assert not sub.frames and sub.gated == 5  # nothing before the keyframe
        assert len(sent) == 1  # one request outstanding, not one per frame
        await asyncio.sleep(PLI_RETRY_S + 0.05)
        hub._on_encoded("VP8", DELTA, 0)
        assert len(sent) == 2  # no keyframe came: asked again
        hub._on_encoded("VP8", KEY, 0)
        hub._on_encoded("VP8", DELTA, 0)
        assert [f.keyframe for f in sub.frames] == [True, False]
        assert hub.size == (160, 120)
        sub.frames.clear()
        hub._on_picture_loss()  # the jitter buffer gave up on a frame: aiortc sent a PLI
        hub._on_encoded("VP8", DELTA, 0)
        assert not sub.frames and len(sent) == 2  # gated; aiortc's own PLI is the request
        hub._on_encoded("VP8", KEY, 0)
        assert [f.keyframe for f in sub.frames] == [True]
        # A sender stuck for ENCODED_QUEUE frames is dropped to the next keyframe, not smeared.
        for _ in range(6):
            hub._on_encoded("VP8", DELTA, 0)
        assert not sub.frames and sub.awaiting_keyframe and sub.dropped > 0

    asyncio.run(main())


def test_a_relay_track_without_a_tapped_publisher_transcodes_as_before() -> None:
    track = RelayTrack("video")
    hub = TrackHub("video", "bot")  # a bot's local track: no encoded frames exist
    track.bind(hub)
    assert not hub.can_forward and track._wanted(hub) == "transcoded"


def test_the_publishers_frame_rate_comes_from_its_timestamps_not_from_arrival_bursts() -> None:
    hub = TrackHub("video", "ana")
    hub._receiver = object()  # as if tapped on a publisher's receiver
    # A 15 fps camera (6000 ticks of the 90 kHz clock a frame), its first frames released by
    # the jitter buffer in one burst: arrival times say hundreds of frames a second.
    for i in range(10):
        hub._on_encoded("VP8", KEY if i == 0 else DELTA, 1_000 + 6_000 * i)
    assert hub.fps is not None and abs(hub.fps - 15.0) < 0.01
    # The same timestamp twice, or a jump over a second (a pause), is not a rate.
    hub._on_encoded("VP8", DELTA, 1_000 + 6_000 * 9)
    hub._on_encoded("VP8", DELTA, 1_000 + 6_000 * 9 + 200_000)
    assert abs(hub.fps - 15.0) < 0.01
    # The 32-bit timestamp wraps: still 15 fps.
    hub._on_encoded("VP8", DELTA, 2**32 - 3_000)
    hub._on_encoded("VP8", DELTA, 3_000)
    assert abs(hub.fps - 15.0) < 0.01


def test_the_publishers_bitrate_is_measured_over_media_time() -> None:
    hub = TrackHub("video", "ana")
    hub._receiver = object()  # as if tapped on a publisher's receiver
    # 30 fps (3000 ticks a frame), 1250-byte deltas and a 6250-byte keyframe every 2 s:
    # (58 x 1250 + 2 x 6250) bytes x 8 per 2 s = 340 kbps, all released in one burst.
    ts = 0

    def frame(i: int) -> None:
        hub._on_encoded("VP8", KEY + b"k" * 6220 if i % 60 == 0 else DELTA + b"d" * 1227, ts)

    for i in range(25):  # under a second of media: not measured yet
        frame(i)
        ts += 3_000
    assert hub.kbps is None
    for i in range(25, 300):
        frame(i)
        ts += 3_000
    assert hub.kbps is not None and abs(hub.kbps - 340) < 340 * 0.1
    # A pause (a second or more between frames) is not a rate: it neither dilutes the
    # figure nor counts its frame's bytes.
    ts += 5 * 90_000
    frame(1)
    assert abs(hub.kbps - 340) < 340 * 0.1
    # The camera halves its bitrate: the figure follows within a few seconds.
    for _ in range(240):  # 8 s
        hub._on_encoded("VP8", DELTA + b"d" * 602, ts)
        ts += 3_000
    assert abs(hub.kbps - 150.6) < 150.6 * 0.1
