"""CallSupervisor: which closed connections count as a participant's network dropping."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

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
