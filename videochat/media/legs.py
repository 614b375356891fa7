"""Media legs: each server-side peer connection of a participant, publish or subscribe.

The call page registers a leg as soon as streamlit-webrtc has created its worker; listeners
(the stats sampler, the fault manager, the recovery watchdog) learn about every leg,
including legs rebuilt after a reconnect, through `add_listener`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)

Direction = Literal["publish", "subscribe"]


@dataclass(eq=False)
class MediaLeg:
    leg_id: str
    room: str
    participant: str  # display name
    participant_id: str
    direction: Direction
    pc: RTCPeerConnection
    loop: asyncio.AbstractEventLoop
    call_id: str | None = None
    slot_index: int | None = None
    created_at: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        """Close the server side of this leg now (what a dropped connection looks like)."""
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.pc.close()))

    @property
    def closed(self) -> bool:
        return self.pc.connectionState == "closed"


LegListener = Callable[[MediaLeg, bool], None]  # (leg, added)


class LegRegistry:
    def __init__(self) -> None:
        self._legs: dict[str, MediaLeg] = {}
        self._by_pc: dict[int, str] = {}
        self._listeners: list[LegListener] = []
        self._lock = threading.Lock()

    def add_listener(self, listener: LegListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def register(self, leg: MediaLeg) -> bool:
        """Register once per peer connection; returns False when already known."""
        with self._lock:
            if id(leg.pc) in self._by_pc:
                return False
            old = self._legs.get(leg.leg_id)
            self._legs[leg.leg_id] = leg
            self._by_pc[id(leg.pc)] = leg.leg_id
            listeners = list(self._listeners)
        if old is not None:
            self._notify(listeners, old, False)
        self._notify(listeners, leg, True)
        pc = leg.pc

        @pc.on("connectionstatechange")
        def _closed() -> None:
            logger.info("leg %s %s connection %s after %.2f s", leg.leg_id, leg.participant,
                        pc.connectionState, time.monotonic() - leg.created_at)
            if pc.connectionState == "closed":
                self.unregister(leg)

        return True

    def unregister(self, leg: MediaLeg) -> None:
        with self._lock:
            if self._by_pc.pop(id(leg.pc), None) is None:
                return
            if self._legs.get(leg.leg_id) is leg:
                del self._legs[leg.leg_id]
            listeners = list(self._listeners)
        self._notify(listeners, leg, False)

    def get(self, leg_id: str) -> MediaLeg | None:
        with self._lock:
            return self._legs.get(leg_id)

    def known(self, pc: RTCPeerConnection) -> bool:
        return id(pc) in self._by_pc

    def legs(self, room: str | None = None, participant_id: str | None = None) -> list[MediaLeg]:
        with self._lock:
            return [
                leg for leg in self._legs.values()
                if (room is None or leg.room == room)
                and (participant_id is None or leg.participant_id == participant_id)
            ]

    @staticmethod
    def _notify(listeners: list[LegListener], leg: MediaLeg, added: bool) -> None:
        for listener in listeners:
            try:
                listener(leg, added)
            except Exception:  # noqa: BLE001 - one listener must not break the others
                logger.exception("leg listener failed")
