from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from videochat.media.relay import AUDIO_QUEUE, VIDEO_CLOCK, RelayTrack, TrackHub


class FeedTrack(MediaStreamTrack):
    """A source we push frames into by hand (like a browser's input track)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue()

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def video_frame(value: int, pts: int = 0, size: tuple[int, int] = (64, 48)) -> av.VideoFrame:
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def audio_frame(pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = 48000
    frame.pts = pts
    return frame


def value_of(frame: av.VideoFrame) -> int:
    return int(frame.to_ndarray(format="rgb24")[0, 0, 0])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slow_subscriber_gets_the_newest_video_frame_only() -> None:
    async def main() -> None:
        hub = TrackHub("video", "ana")
        src = FeedTrack("video")
        sink = hub.sink()
        sink.addTrack(src)
        sink.start()
        out = RelayTrack("video")
        out.bind(hub)
        first = asyncio.ensure_future(out.recv())  # subscribes
        await settle()
        for v in range(10, 20):
            src.queue.put_nowait(video_frame(v))
        await settle()
        assert value_of(await first) in range(10, 20)
        for v in range(20, 120):  # a slow encoder: 100 frames arrive between two reads
            src.queue.put_nowait(video_frame(v))
        await settle()
        got = await out.recv()
        assert value_of(got) == 119  # only the newest one was kept: no backlog, no latency
        assert hub.frames_in == 110
        out.stop()
        sink.stop()

    asyncio.run(main())


def test_audio_queue_is_bounded() -> None:
    async def main() -> None:
        hub = TrackHub("audio")
        src = FeedTrack("audio")
        sink = hub.sink()
        sink.addTrack(src)
        sink.start()
        out = RelayTrack("audio")
        out.bind(hub)
        pending = asyncio.ensure_future(out.recv())
        await settle()
        src.queue.put_nowait(audio_frame(0))
        await settle()
        await pending
        for i in range(100):
            src.queue.put_nowait(audio_frame(960 * (i + 1)))
        await settle()
        assert len(out._sub.frames) == AUDIO_QUEUE
        assert out._sub.dropped == 100 - AUDIO_QUEUE

    asyncio.run(main())


def test_subscriber_survives_publisher_reconnect_with_continuous_pts() -> None:
    async def main() -> None:
        hub = TrackHub("video", "ana")
        out = RelayTrack("video")
        out.bind(hub)
        old_src, old_sink = FeedTrack("video"), hub.sink()
        old_sink.addTrack(old_src)
        old_sink.start()
        pending = asyncio.ensure_future(out.recv())
        await settle()
        old_src.queue.put_nowait(video_frame(1, pts=5_000_000))
        before = await pending
        # The publisher's connection is rebuilt: a new input track whose pts restart at 0.
        new_src, new_sink = FeedTrack("video"), hub.sink()
        new_sink.addTrack(new_src)
        new_sink.start()
        old_sink.stop()  # the old worker stops late: it must not cut off the new input
        await asyncio.sleep(0.02)
        pending = asyncio.ensure_future(out.recv())
        await settle()
        new_src.queue.put_nowait(video_frame(2, pts=0))
        after = await pending
        assert value_of(after) == 2
        assert hub.live
        # pts follow the hub's clock, so receivers see one continuous stream
        assert after.time_base == fractions.Fraction(1, VIDEO_CLOCK)
        assert after.pts > before.pts

    asyncio.run(main())


def test_rebinding_switches_publisher() -> None:
    async def main() -> None:
        hubs = {}
        srcs = {}
        for name in ("ana", "bob"):
            hubs[name] = TrackHub("video", name)
            srcs[name] = FeedTrack("video")
            sink = hubs[name].sink()
            sink.addTrack(srcs[name])
            sink.start()
        out = RelayTrack("video")
        out.bind(hubs["ana"])
        pending = asyncio.ensure_future(out.recv())
        await settle()
        srcs["ana"].queue.put_nowait(video_frame(1))
        assert value_of(await pending) == 1
        out.bind(hubs["bob"])
        await settle()
        srcs["ana"].queue.put_nowait(video_frame(3))
        srcs["bob"].queue.put_nowait(video_frame(7))
        await settle()
        assert value_of(await out.recv()) == 7

    asyncio.run(main())


def test_stopping_a_relay_track_ends_a_pending_recv() -> None:
    async def main() -> None:
        out = RelayTrack("video")
        out.bind(TrackHub("video"))
        pending = asyncio.ensure_future(out.recv())
        await settle()
        out.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(pending, 1)

    asyncio.run(main())


def test_transform_can_scale_or_drop() -> None:
    async def main() -> None:
        hub = TrackHub("video")
        src = FeedTrack("video")
        sink = hub.sink()
        sink.addTrack(src)
        sink.start()
        out = RelayTrack("video")
        out.bind(hub)
        out.transform = lambda f: None if value_of(f) % 2 else f.reformat(width=32, height=24)
        pending = asyncio.ensure_future(out.recv())
        await settle()
        src.queue.put_nowait(video_frame(1))
        await settle()
        src.queue.put_nowait(video_frame(2))
        got = await asyncio.wait_for(pending, 1)
        assert (got.width, got.height) == (32, 24)
        assert out.frames_out == 1

    asyncio.run(main())
