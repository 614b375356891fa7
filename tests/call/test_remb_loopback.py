"""Bandwidth estimates (REMB) both ways, on real aiortc peer connections over loopback, with a
bandwidth cap from the fault injector.

* Down (a subscriber leg): the receiver's REMB reaches the server's hook and the leg's rung
  encoder, whose bitrate falls under the cap; the received rate fits the cap.
* Up (a publishing leg): the server's receiver estimates what the capped uplink carries and
  its REMB reaches the publisher's encoder (here an aiortc one standing in for the browser's,
  which honours REMB the same way), so the publisher sends less instead of losing packets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, VideoStreamTrack

from videochat.call.rtcp import watch_receiver_reports
from videochat.compat.encoders import RungVp8Encoder, install_encoder, install_leg_encoders
from videochat.faults.injector import FaultManager
from videochat.faults.model import parse_fault

W, H = 320, 240
CAP_KBPS = 300


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


class NoiseTrack(VideoStreamTrack):
    """Low-amplitude noise: VP8 spends whatever bitrate it is given on it."""

    def __init__(self) -> None:
        super().__init__()
        self._rng = np.random.default_rng(1)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = (120 + self._rng.integers(0, 16, (H * 3 // 2, W))).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class Leg:
    room: str
    participant: str
    participant_id: str
    direction: Literal["publish", "subscribe"]
    pc: RTCPeerConnection

    def close(self) -> None:
        pass


async def drain(track: MediaStreamTrack) -> None:
    while True:
        try:
            await track.recv()
        except Exception:  # noqa: BLE001 - MediaStreamError when the call ends
            return


async def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.1)


async def settles_without_drops(manager: FaultManager, name: str, direction: str,
                                timeout: float = 20.0, window: float = 2.0) -> None:
    """Wait for a `window` in which the cap dropped none of `name`'s packets (after the first
    cut, retransmissions of what overflowed take a few seconds to clear). aiortc's own inbound
    counters are no use here: with RTX negotiated, its retransmission entry overwrites the
    media stream's."""
    deadline = time.monotonic() + timeout
    drops: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        before = manager.counters("r", name)[direction]
        await asyncio.sleep(window)
        after = manager.counters("r", name)[direction]
        drops.append((after.dropped - before.dropped, after.packets - before.packets))
        if drops[-1][1] > 20 and drops[-1][0] == 0:
            return
    raise AssertionError(f"still overflowing the cap: (dropped, packets) per {window} s {drops}")


async def call(direction: str) -> tuple[RTCPeerConnection, RTCPeerConnection, list[Any]]:
    """`browser` offers; the server sends (down) or receives (up) a noise video."""
    config = RTCConfiguration(iceServers=[])
    browser, server = RTCPeerConnection(config), RTCPeerConnection(config)
    tasks: list[Any] = []
    receiver = browser if direction == "down" else server
    receiver.on("track", lambda track: tasks.append(asyncio.ensure_future(drain(track))))
    if direction == "down":
        browser.addTransceiver("video", direction="recvonly")
    else:
        browser.addTransceiver(NoiseTrack(), direction="sendonly")
    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    if direction == "down":
        server.addTrack(NoiseTrack())
    await server.setLocalDescription(await server.createAnswer())
    await browser.setRemoteDescription(server.localDescription)
    return browser, server, tasks


def test_the_receivers_estimate_sets_the_subscriber_legs_bitrate_under_a_cap() -> None:
    async def main() -> None:
        browser, server, tasks = await call("down")
        encoder = install_leg_encoders(server, 800_000, start_bps=800_000)
        assert encoder is not None
        estimates: list[float] = []
        watch_receiver_reports(server, lambda *a: None, lambda kind, kbps: estimates.append(kbps))
        await wait_for(lambda: len(estimates) >= 2, 10)
        assert encoder.remb_bps is not None  # aiortc handed the same REMB to the encoder
        manager = FaultManager(asyncio.get_running_loop(), seed=3)
        manager.register_leg(Leg("r", "bob", "p-bob", "subscribe", server))
        manager.apply(parse_fault({"kind": "bandwidth", "room": "r", "kbps": CAP_KBPS,
                                   "direction": "down", "duration_s": 60}))
        await wait_for(lambda: encoder.target_bitrate < CAP_KBPS * 1000, 20)
        await settles_without_drops(manager, "bob", "down")  # it fits the cap
        for task in tasks:
            task.cancel()
        await browser.close()
        await server.close()

    asyncio.run(main())


def test_the_servers_estimate_reaches_the_publisher_and_lowers_its_rate() -> None:
    async def main() -> None:
        browser, server, tasks = await call("up")
        sender = browser.getSenders()[0]
        # The publisher's encoder: aiortc's own would clamp at 250 kbps, ours follows REMB down.
        publisher = RungVp8Encoder(1_500_000, start_bps=800_000)
        install_encoder(sender, publisher)
        await wait_for(lambda: publisher.remb_bps is not None, 10)
        manager = FaultManager(asyncio.get_running_loop(), seed=3)
        manager.register_leg(Leg("r", "ana", "p-ana", "publish", server))
        manager.apply(parse_fault({"kind": "bandwidth", "room": "r", "kbps": CAP_KBPS,
                                   "direction": "up", "duration_s": 60}))
        await wait_for(lambda: (publisher.remb_bps or 0) < CAP_KBPS * 1000, 20)
        await wait_for(lambda: publisher.target_bitrate < CAP_KBPS * 1000, 5)
        await settles_without_drops(manager, "ana", "up")
        for task in tasks:
            task.cancel()
        await browser.close()
        await server.close()

    asyncio.run(main())
