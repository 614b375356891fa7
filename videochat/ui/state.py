"""Process-wide objects for the Streamlit app, created once per server process."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import streamlit as st

from videochat.call_log import CallLog
from videochat.events import CallEvent, EventBus
from videochat.ice import restrict_host_addresses
from videochat.legs import LegRegistry
from videochat.participant import Participant
from videochat.presence import Presence
from videochat.room import Room, RoomRegistry
from videochat.services import Services
from videochat.settings import Settings
from videochat.ui import wake

logger = logging.getLogger(__name__)


@st.cache_resource
def get_settings() -> Settings:
    return Settings.load()


@st.cache_resource
def get_services() -> Services:
    return Services.from_settings(get_settings())


@dataclass
class AppRuntime:
    settings: Settings
    services: Services
    bus: EventBus
    registry: RoomRegistry
    presence: Presence
    call_log: CallLog
    node: str
    legs: LegRegistry = field(default_factory=LegRegistry)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start_housekeeping(self) -> None:
        threading.Thread(target=self._housekeeping, name="rooms-housekeeping",
                         daemon=True).start()

    def _housekeeping(self) -> None:
        last_touch = 0.0
        while not self._stop.wait(1.0):
            try:
                # A closed tab ends its Streamlit session; the grace keeps a websocket blip
                # (laptop sleep, server restart) from counting as leaving.
                self.registry.reap(wake.session_alive, self.settings.reconnect_grace_s)
                if time.monotonic() - last_touch > 10:
                    last_touch = time.monotonic()
                    for p in self.registry.participants():
                        self.presence.touch(p.room, p.id, p.name, p.joined_at)
            except Exception:  # noqa: BLE001 - housekeeping must survive backend outages
                logger.warning("rooms housekeeping failed", exc_info=True)


@st.cache_resource
def get_runtime() -> AppRuntime:
    settings = get_settings()
    services = get_services()
    restrict_host_addresses(settings.ice_addresses)
    node = f"{socket.gethostname()}:{services.redis_url.rsplit(':', 1)[-1]}"
    bus = EventBus()
    presence = Presence(services.redis, node=node)
    call_log = CallLog(services.db)
    bus.add_sink(call_log.event)

    def on_join(room: Room, p: Participant) -> None:
        call_log.participant_joined(room=room.name, call_id=room.call_id, participant_id=p.id,
                                    name=p.name, joined_at=p.joined_at, node=node)
        try:
            presence.join(room.name, p.id, p.name, p.joined_at)
        except Exception:  # noqa: BLE001 - Redis down: housekeeping re-publishes presence
            logger.warning("presence join failed for %s", p.name, exc_info=True)

    def on_leave(room: Room, p: Participant) -> None:
        call_log.participant_left(call_id=room.call_id, participant_id=p.id,
                                  left_at=time.time(), reason="left",
                                  call_ended=not room.participants)
        try:
            presence.leave(room.name, p.id)
        except Exception:  # noqa: BLE001
            logger.warning("presence leave failed for %s", p.name, exc_info=True)

    registry = RoomRegistry(
        max_participants=settings.max_participants,
        wake=wake.wake_sessions,
        emit=bus.emit,
        on_join=on_join,
        on_leave=on_leave,
    )
    rt = AppRuntime(settings, services, bus, registry, presence, call_log, node)
    rt.start_housekeeping()
    return rt


def emit(event: CallEvent) -> None:
    get_runtime().bus.emit(event)
