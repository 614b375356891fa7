"""CallSupervisor: which closed connections count as a participant's network dropping, and
what reaches a subscriber leg's view."""

from __future__ import annotations

import asyncio
import time

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

from tests.call.test_remb_loopback import drain
from videochat.call.recovery import ReconnectState
from videochat.call.supervisor import CallSupervisor
from videochat.media.legs import LegRegistry, MediaLeg
from videochat.media.participant import Participant
from videochat.media.room import RoomRegistry


def leg(me: Participant, name: str, slot_index: int | None) -> MediaLeg:
    return MediaLeg(f"{me.id[:12]}:{name}", me.room, me.name, me.id,
                    "publish" if slot_index is None else "subscribe", RTCPeerConnection(),
                    asyncio.get_running_loop(), slot_index=slot_index)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.05)


async def someone_leaves_then(close: str) -> tuple[ReconnectState, list[str]]:
    registry = RoomRegistry(defer=lambda delay, fn: None)
    legs = LegRegistry()
    rebuilt: list[str] = []
    sup = CallSupervisor(registry, legs, emit=None, faults=None,
                         rebuild=lambda p: rebuilt.append(p.name))
    registry.join("r", "ana")
    bob = registry.join("r", "bob")
    carol = registry.join("r", "carol")
    ana_slot = next(s for s in carol.slots if s.publisher_id != bob.id and s.publisher_id)
    spare = next(s for s in carol.slots if s.publisher_id is None)
    mine = {"pub": leg(carol, "pub", None), "ana": leg(carol, "sub-ana", ana_slot.index),
            "spare": leg(carol, "sub-spare", spare.index)}
    for each in mine.values():
        legs.register(each)
    await settle()
    sup._frame(carol.id)  # carol's camera delivers: she is supervised from here on
    registry.leave(ana_slot.publisher_id or "")
    assert ana_slot.publisher_id is None  # her slot for ana is free: two unbound slots now
    await mine[close].pc.close()  # the page drops one of them, or her camera leg dies
    await settle()
    at_once = list(rebuilt)  # a dead connection is acted on without waiting for a tick
    sup.tick()
    assert rebuilt == at_once
    state = sup.reconnect_state(carol.id)
    assert state is not None
    outcome = list(rebuilt)  # closing everything below is not part of the case
    for each in mine.values():
        await each.pc.close()
    if sup._task is not None:
        sup._task.cancel()
    return state, outcome


def test_the_spare_the_page_drops_after_someone_left_is_not_a_network_drop() -> None:
    state, rebuilt = asyncio.run(someone_leaves_then("spare"))
    assert state is ReconnectState.CONNECTED and rebuilt == []


def test_a_freed_slot_closed_the_same_way_is_not_one_either() -> None:
    state, rebuilt = asyncio.run(someone_leaves_then("ana"))
    assert state is ReconnectState.CONNECTED and rebuilt == []


def test_a_closed_publishing_leg_still_is() -> None:
    state, rebuilt = asyncio.run(someone_leaves_then("pub"))
    assert state is not ReconnectState.CONNECTED and rebuilt == ["carol"]


def test_the_receivers_estimate_reaches_the_subscribers_view(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The receiver's REMB must reach the ladder and the forwarding rule (a sender's RTCP is
    # hooked once: a hook without the estimate sink, set first, used to swallow every REMB).
    monkeypatch.setattr(aioice.ice, "get_host_addresses",
                        lambda use_ipv4, use_ipv6: ["127.0.0.1"])

    async def main() -> float | None:
        registry = RoomRegistry(defer=lambda delay, fn: None)
        legs = LegRegistry()
        sup = CallSupervisor(registry, legs, emit=None, faults=None, rebuild=lambda p: None)
        ana = registry.join("r", "ana")
        bob = registry.join("r", "bob")
        slot = next(s for s in bob.slots if s.publisher_id == ana.id)
        config = RTCConfiguration(iceServers=[])
        browser, server = RTCPeerConnection(config), RTCPeerConnection(config)
        drained: list[asyncio.Task[None]] = []

        browser.on("track", lambda track: drained.append(asyncio.ensure_future(drain(track))))
        browser.addTransceiver("video", direction="recvonly")
        await browser.setLocalDescription(await browser.createOffer())
        await server.setRemoteDescription(browser.localDescription)
        server.addTrack(VideoStreamTrack())
        await server.setLocalDescription(await server.createAnswer())
        mine = MediaLeg(f"{bob.id[:12]}:sub", "r", "bob", bob.id, "subscribe", server,
                        asyncio.get_running_loop(), slot_index=slot.index)
        legs.register(mine)
        await browser.setRemoteDescription(server.localDescription)
        deadline = time.monotonic() + 15
        estimate = None
        while time.monotonic() < deadline and estimate is None:
            await asyncio.sleep(0.2)
            view = sup.view(mine.leg_id)
            estimate = view.estimate_kbps if view is not None else None
        for task in drained:
            task.cancel()
        await browser.close()
        await server.close()
        if sup._task is not None:
            sup._task.cancel()
        return estimate

    estimate = asyncio.run(main())
    assert estimate is not None and estimate > 0
