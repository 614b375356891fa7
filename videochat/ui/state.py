"""Process-wide objects for the Streamlit app, created once per server process."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st
from streamlit_webrtc.eventloop import get_global_event_loop

from videochat.backends.services import Services
from videochat.call.access import RoomAccess
from videochat.call.call_log import CallLog
from videochat.call.presence import Presence
from videochat.call.supervisor import CallSupervisor
from videochat.chat.service import ChatService
from videochat.events import CallEvent, EventBus
from videochat.faults.control import FaultConsumer, start_fault_plane
from videochat.faults.injector import FaultManager
from videochat.media.ice import cap_stun_retransmissions, restrict_host_addresses
from videochat.media.legs import LegRegistry
from videochat.media.participant import Participant
from videochat.media.relay import end_remote_tracks_on_close
from videochat.media.room import Room, RoomRegistry
from videochat.metrics.process_health import (
    ProcessHealth,
    stalled_peer_connections,
    track_peer_connections,
)
from videochat.metrics.stats import MetricSample, Sampler
from videochat.metrics.store import MetricsStore
from videochat.settings import Settings
from videochat.ui import wake, webrtc

logger = logging.getLogger(__name__)

STALLED_AFTER_S = 60.0  # a server connection that has not connected by then is nobody's
STUN_RETRY_CAP_S = 0.5  # see videochat/media/ice.py: rebuilt legs connect soon after a path returns


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
    legs: LegRegistry
    metrics: MetricsStore
    sampler: Sampler
    faults: FaultManager
    fault_consumer: FaultConsumer
    supervisor: CallSupervisor
    chat: ChatService
    access: RoomAccess
    chat_rooms: dict[str, Callable[[], None]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch_chat(self, room: str) -> None:
        """Wake every session in `room` when a chat message arrives (once per room)."""
        if room in self.chat_rooms:
            return

        def on_message(r: str) -> None:
            found = self.registry.rooms.get(r)
            if found is not None:
                self.registry.wake(list(found.participants))

        self.chat_rooms[room] = self.chat.hub.subscribe(room, on_message)

    def start_housekeeping(self) -> None:
        threading.Thread(target=self._housekeeping, name="rooms-housekeeping",
                         daemon=True).start()

    def _close_stalled_connections(self) -> None:
        # A server-side connection whose browser went away before ICE connected stays
        # "checking" for ever: Chromium's offers carry no end-of-candidates, and aioice only
        # fails after it. Registered legs are the supervisor's; these are nobody's.
        for pc in stalled_peer_connections(STALLED_AFTER_S):
            if not self.legs.known(pc):
                logger.warning("closing a connection that never connected in %.0f s",
                               STALLED_AFTER_S)
                asyncio.run_coroutine_threadsafe(pc.close(), get_global_event_loop())

    def _housekeeping(self) -> None:
        last_touch = 0.0
        while not self._stop.wait(1.0):
            try:
                # A closed tab ends its Streamlit session; the grace keeps a websocket blip
                # (laptop sleep, server restart) from counting as leaving.
                self.registry.reap(wake.session_alive, self.settings.reconnect_grace_s)
                if time.monotonic() - last_touch > 10:
                    last_touch = time.monotonic()
                    self._close_stalled_connections()
                    for p in self.registry.participants():
                        self.presence.touch(p.room, p.id, p.name, p.joined_at)
            except Exception:  # noqa: BLE001 - housekeeping must survive backend outages
                logger.warning("rooms housekeeping failed", exc_info=True)


@st.cache_resource
def get_runtime() -> AppRuntime:
    settings = get_settings()
    services = get_services()
    restrict_host_addresses(settings.ice_addresses)
    cap_stun_retransmissions(STUN_RETRY_CAP_S)
    node = f"{socket.gethostname()}:{services.redis_url.rsplit(':', 1)[-1]}"
    bus = EventBus()
    presence = Presence(services.redis, node=node)
    call_log = CallLog(services.db)
    metrics = MetricsStore.from_settings(services.db, settings)
    bus.add_sink(metrics.emit)
    loop = get_global_event_loop()
    legs = LegRegistry()
    track_peer_connections()  # before the first RTCPeerConnection: the health sampler counts them
    end_remote_tracks_on_close()
    ProcessHealth(services.db, node=node, loop=loop, legs=legs, stalled_after_s=STALLED_AFTER_S,
                  retention_days=settings.metrics_retention_days).start()

    def on_join(room: Room, p: Participant) -> None:
        call_log.participant_joined(room=room.name, call_id=room.call_id, participant_id=p.id,
                                    name=p.name, joined_at=p.joined_at, node=node)
        try:
            presence.join(room.name, p.id, p.name, p.joined_at)
        except Exception:  # noqa: BLE001 - Redis down: housekeeping re-publishes presence
            logger.warning("presence join failed for %s", p.name, exc_info=True)

    access = RoomAccess(services.redis, services.db["rooms"])

    def on_leave(room: Room, p: Participant) -> None:
        if not room.participants:
            try:
                access.clear_passcode(room.name)  # a room's passcode lives as long as its call
            except Exception:  # noqa: BLE001
                logger.warning("could not clear the passcode of %s", room.name, exc_info=True)
        call_log.participant_left(call_id=room.call_id, participant_id=p.id,
                                  left_at=time.time(), reason="left",
                                  call_ended=not room.participants)
        try:
            presence.leave(room.name, p.id)
        except Exception:  # noqa: BLE001
            logger.warning("presence leave failed for %s", p.name, exc_info=True)
        # Streamlit keeps a closed tab's session (and its streamers) for a possible reconnect,
        # so their connections would outlive the participant: a rebuild started just before
        # the tab closed never connects and, being a leg, is not reaped as stalled.
        for leg in legs.legs(participant_id=p.id):
            leg.close()

    registry = RoomRegistry(
        max_participants=settings.max_participants,
        wake=wake.wake_sessions,
        emit=bus.emit,
        on_join=on_join,
        on_leave=on_leave,
    )
    faults, fault_consumer = start_fault_plane(services, loop, bus, node)
    legs.add_listener(faults.leg_listener)

    def rebuild(p: Participant) -> None:
        # New component keys: that session's next run mounts fresh streamers (new peer
        # connections); the old ones were closed by the supervisor.
        p.publish_epoch += 1
        for slot in p.slots:
            slot.epoch += 1
        registry.wake([p.id])

    supervisor = CallSupervisor(registry, legs, emit=bus.emit, faults=faults, rebuild=rebuild,
                                grace_s=settings.reconnect_grace_s)

    def sink(sample: MetricSample) -> None:
        metrics.record(sample)
        supervisor.on_sample(sample)

    sampler = Sampler(None, sink)
    supervisor.counter_of = sampler.counter
    legs.add_listener(sampler.leg_listener(quality_of=supervisor.quality_of))
    chat = ChatService.start(services.redis, services.db, settings)
    rt = AppRuntime(settings, services, bus, registry, presence, call_log, node, legs, metrics,
                    sampler, faults, fault_consumer, supervisor, chat, access)
    rt.start_housekeeping()
    # Bot participants (videochat.bots.host): hosted here, added by the call page or through Redis.
    from videochat.bots.host import start_bot_plane

    start_bot_plane(services.redis, registry, loop, node)
    webrtc.install_offer_route()  # finds Streamlit's app among gc-tracked objects: before freeze
    # Start-up objects (Streamlit, aiortc, our services: ~167k) out of the collector's view:
    # a full collection over them took 83 ms, a stall every chat message and frame then waits on.
    gc.collect()
    gc.freeze()
    return rt


def emit(event: CallEvent) -> None:
    get_runtime().bus.emit(event)
