"""BoundedMediaRelay (videochat/ui/webrtc.py) ends the reader task of every stopped proxy.

streamlit-webrtc relays a subscriber's source once, then relays that proxy again for the
sender; aiortc's MediaRelay never wakes a stopped proxy, so each rebuilt leg used to leave one
reader task (and its last frame) behind for good. This replays that pattern on real tracks.
"""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from videochat.compat.aiortc import end_remote_tracks_on_close
from videochat.media.participant import Slot
from videochat.media.relay import TrackHub
from videochat.ui.webrtc import BoundedMediaRelay


class Camera(MediaStreamTrack):
    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 30)
        frame = av.VideoFrame(160, 120, "yuv420p")
        frame.pts, frame.time_base = self.n, fractions.Fraction(1, 30)
        self.n += 1
        return frame


def relay_readers() -> int:
    return sum(1 for t in asyncio.all_tasks() if "__run_track" in t.get_coro().__qualname__)


async def rebuild_ten_times() -> tuple[int, int, int]:
    relay = BoundedMediaRelay(loop=asyncio.get_running_loop())
    hub, cam = TrackHub("video", "pub"), Camera()
    sink = hub.sink()
    sink.addTrack(cam)
    sink.start()
    slot = Slot.create("owner0000000", 0)
    slot.video.bind(hub)
    received = 0
    for _ in range(10):
        outer = relay.subscribe(slot.video)  # the worker's relayed source
        inner = relay.subscribe(outer)  # what its RTCRtpSender reads

        async def sender(track: MediaStreamTrack = inner) -> None:
            nonlocal received
            while True:
                await track.recv()
                received += 1

        task = asyncio.ensure_future(sender())
        await asyncio.sleep(0.3)
        outer.stop()  # worker.stop(): the relayed source first, then the sender's track
        task.cancel()
        inner.stop()
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    during = relay_readers()
    slot.close()
    await asyncio.sleep(0.3)
    after = relay_readers()
    sink.stop()
    hub.close()
    cam.stop()
    return received, during, after


def test_rebuilt_legs_leave_no_relay_reader_behind() -> None:
    received, during, after = asyncio.run(rebuild_ten_times())
    assert received > 30  # frames really flowed through every rebuilt chain
    assert during <= 1, f"{during} relay readers alive after 10 rebuilds (1 = the slot's own)"
    assert after == 0


async def close_before_connected() -> tuple[int, int, bool]:
    """A browser's offer reaches the server, the worker relays its incoming track, and the
    browser goes away before ICE connects: the server connection is closed unconnected."""
    relay = BoundedMediaRelay(loop=asyncio.get_running_loop())
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    browser.addTransceiver(Camera(), direction="sendonly")
    ended = asyncio.Event()

    @server.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        relayed = relay.subscribe(track)

        async def consumer() -> None:  # the hub's sink reading the publisher's track
            try:
                while True:
                    await relayed.recv()
            except MediaStreamError:
                ended.set()

        asyncio.ensure_future(consumer())

    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    await server.setLocalDescription(await server.createAnswer())
    await asyncio.sleep(0.1)
    before = relay_readers()
    await server.close()
    await browser.close()
    try:
        await asyncio.wait_for(ended.wait(), 2.0)
    except TimeoutError:
        pass
    await asyncio.sleep(0.1)
    return before, relay_readers(), ended.is_set()


def test_closing_an_unconnected_connection_ends_the_readers_of_its_tracks() -> None:
    # aiortc ends a remote track only through its receiver's decoder, which starts only once
    # the connection is up; without end_remote_tracks_on_close() this reader waited for ever.
    end_remote_tracks_on_close()
    before, after, ended = asyncio.run(close_before_connected())
    assert before == 1
    assert ended, "the consumer of the closed connection's track never saw it end"
    assert after == 0


def test_video_proxies_keep_the_newest_decoded_frame_and_every_packet_up_to_a_keyframe() -> None:
    from videochat.compat.aiortc import NewestFrameQueue

    gaps: list[int] = []
    q = NewestFrameQueue(limit=3, on_gap=lambda: gaps.append(1))
    for _ in range(5):
        q.put_nowait(av.VideoFrame(16, 16, "yuv420p"))
    assert q.qsize() == 1 and q.dropped == 4  # decoded: the newest only

    def packet(key: bool) -> av.Packet[Any]:
        p = av.Packet(b"x")
        p.is_keyframe = key
        return p

    q = NewestFrameQueue(limit=3, on_gap=lambda: gaps.append(1))
    for key in (True, False, False):
        q.put_nowait(packet(key))
    assert q.qsize() == 3  # packets in order, none dropped
    q.put_nowait(packet(False))  # the sender is stuck: drop to the next keyframe...
    assert q.qsize() == 0 and gaps == [1]
    q.put_nowait(packet(False))
    assert q.qsize() == 0  # ...never a delta frame whose references are gone
    q.put_nowait(packet(True))
    q.put_nowait(None)
    assert q.qsize() == 2 and q.get_nowait().is_keyframe and q.get_nowait() is None
