"""Real aiortc peer connections through our relay, in one process, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack

from videochat.compat import aioice as ice
from videochat.media.participant import Participant, Slot


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    ice.restrict_host_addresses(["127.0.0.1"])
    yield
    ice.restrict_host_addresses([])


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def publish(p: Participant) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A 'browser' sending its camera to the server's publish leg (SENDONLY)."""
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    browser.addTransceiver(VideoStreamTrack(), direction="sendonly")

    @server.on("track")
    def on_track(track: object) -> None:
        sink = p.video_hub.sink()
        sink.addTrack(track)  # type: ignore[arg-type]
        sink.start()

    await connect(browser, server)
    return browser, server


async def subscribe(slot: Slot) -> tuple[RTCPeerConnection, RTCPeerConnection, list[float]]:
    """A 'browser' receiving one slot (RECVONLY); returns arrival times of decoded frames."""
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    browser.addTransceiver("video", direction="recvonly")
    arrivals: list[float] = []

    @browser.on("track")
    def on_track(track: object) -> None:
        async def read() -> None:
            while True:
                try:
                    await track.recv()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001
                    return
                arrivals.append(time.monotonic())

        asyncio.ensure_future(read())

    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    server.addTrack(slot.video)
    await server.setLocalDescription(await server.createAnswer())
    await browser.setRemoteDescription(server.localDescription)
    return browser, server, arrivals


def test_media_flows_through_the_relay_and_survives_publisher_rebuild() -> None:
    async def main() -> None:
        ana = Participant("r", "ana")
        bob = Participant("r", "bob")
        slot = bob.free_slot()
        slot.bind(ana)  # bound before ana's media exists, as the spare is
        sub_b, sub_s, arrivals = await subscribe(slot)
        pub_b, pub_s = await publish(ana)
        deadline = time.monotonic() + 15
        while len(arrivals) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(arrivals) >= 20, "no video reached the subscriber through the relay"
        assert sub_s.connectionState == "connected"

        # ana's publish leg dies and is rebuilt; bob's subscribe leg is untouched.
        await pub_b.close()
        await pub_s.close()
        count = len(arrivals)
        pub_b, pub_s = await publish(ana)
        deadline = time.monotonic() + 15
        while len(arrivals) < count + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(arrivals) >= count + 20, "video did not resume after the publisher rebuild"
        assert sub_s.connectionState == "connected"
        for pc in (sub_b, sub_s, pub_b, pub_s):
            await pc.close()
        ana.close()
        bob.close()

    asyncio.run(main())
