"""The composition root: every process-wide service of an app process, built and wired once.

No Streamlit here: the UI hands in the three things only it knows (the media loop, how to
wake a browser session, whether a session is still alive) and caches the result
(`videochat/ui/state.py`). The two flows read top to bottom in `build_runtime`:

    browser -> media legs -> relay -> stats sampler -> metrics store -> diagnostics charts
    fault command -> fault consumer -> injector -> legs
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from videochat import compat
from videochat.backends import keys
from videochat.backends.services import Services
from videochat.backends.worker import BackgroundWorker
from videochat.bots.host import BotConsumer, start_bot_plane
from videochat.call.access import RoomAccess
from videochat.call.call_log import CallLog
from videochat.call.presence import Presence
from videochat.call.supervisor import CallSupervisor
from videochat.chat.service import ChatService
from videochat.events import EventBus
from videochat.faults.control import FaultConsumer, start_fault_plane
from videochat.faults.injector import FaultManager
from videochat.media.legs import LegRegistry
from videochat.media.participant import Participant
from videochat.media.room import Room, RoomRegistry, Waker
from videochat.metrics.browser import BrowserStats
from videochat.metrics.process_health import ProcessHealth, stalled_peer_connections
from videochat.metrics.stats import Sampler
from videochat.metrics.store import MetricsStore
from videochat.settings import Settings

logger = logging.getLogger(__name__)

STALLED_AFTER_S = 60.0  # a server connection that has not connected by then is nobody's
STUN_RETRY_CAP_S = 0.5  # see videochat/compat/aioice.py: rebuilt legs reconnect sooner
PRESENCE_REFRESH_S = 10.0

SessionAlive = Callable[[str], bool]


@dataclass
class AppRuntime:
    """What one app process runs; the pages reach every service through it."""

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
    loop: asyncio.AbstractEventLoop
    session_alive: SessionAlive
    bots: BotConsumer | None = None
    chat_rooms: dict[str, Callable[[], None]] = field(default_factory=dict)
    housekeeping: Housekeeping | None = None
    browser_stats: BrowserStats | None = None  # the pages' own getStats() reports

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
        if self.housekeeping is None:
            self.housekeeping = Housekeeping(self).start()


class Housekeeping(BackgroundWorker):
    """Once a second: reap closed tabs after the grace period; every 10 s, close connections
    nobody registered and refresh presence. Must survive backend outages."""

    def __init__(self, rt: AppRuntime) -> None:
        super().__init__(thread_name="rooms-housekeeping", label="rooms housekeeping",
                         backend_errors=(), join_timeout_s=2.0, interval_s=1.0,
                         error_pause_s=1.0)
        self.rt = rt
        self._last_touch = 0.0

    def run_round(self) -> None:
        rt = self.rt
        # A closed tab ends its Streamlit session; the grace keeps a websocket blip (laptop
        # sleep, server restart) from counting as leaving.
        rt.registry.reap(rt.session_alive, rt.settings.reconnect_grace_s)
        if time.monotonic() - self._last_touch > PRESENCE_REFRESH_S:
            self._last_touch = time.monotonic()
            self._close_stalled_connections()
            for p in rt.registry.participants():
                rt.presence.touch(p.room, p.id, p.name, p.joined_at)

    def _close_stalled_connections(self) -> None:
        # A server-side connection whose browser went away before ICE connected stays
        # "checking" for ever: Chromium's offers carry no end-of-candidates, and aioice only
        # fails after it. Registered legs are the supervisor's; these are nobody's.
        for pc in stalled_peer_connections(STALLED_AFTER_S):
            if not self.rt.legs.known(pc):
                logger.warning("closing a connection that never connected in %.0f s",
                               STALLED_AFTER_S)
                asyncio.run_coroutine_threadsafe(pc.close(), self.rt.loop)


def build_runtime(settings: Settings, services: Services, *, loop: asyncio.AbstractEventLoop,
                  wake: Waker, session_alive: SessionAlive) -> AppRuntime:
    """Build and start every service of an app process hosting media (once per process)."""
    compat.install(ice_addresses=settings.ice_addresses, stun_retry_cap_s=STUN_RETRY_CAP_S)
    node = f"{socket.gethostname()}:{services.redis_url.rsplit(':', 1)[-1]}"

    # Events and the stores they land in.
    bus = EventBus()
    metrics = MetricsStore.from_settings(services.db, settings)
    bus.add_sink(metrics.emit)
    presence = Presence(services.redis, node=node)
    call_log = CallLog(services.db)
    access = RoomAccess(services.redis, services.db[keys.ROOMS])

    # Browser -> media legs (registered by the call page) -> rooms and their relay.
    legs = LegRegistry()
    ProcessHealth(services.db, node=node, loop=loop, legs=legs, stalled_after_s=STALLED_AFTER_S,
                  retention_days=settings.metrics_retention_days).start()
    registry = RoomRegistry(
        max_participants=settings.max_participants,
        wake=wake,
        emit=bus.emit,
        on_join=_on_join(call_log, presence, node),
        on_leave=_on_leave(call_log, presence, access, legs),
    )

    # Fault command -> fault consumer -> injector -> legs.
    faults, fault_consumer = start_fault_plane(services, loop, bus, node)
    legs.add_listener(faults.leg_listener)

    # Legs -> stats sampler -> metrics store (-> diagnostics charts) and the supervisor.
    sampler = Sampler(None, metrics.record)
    supervisor = CallSupervisor(registry, legs, emit=bus.emit, faults=faults,
                                rebuild=_rebuilder(registry), counter_of=sampler.counter,
                                grace_s=settings.reconnect_grace_s)
    sampler.add_sink(supervisor.on_sample)
    legs.add_listener(sampler.leg_listener(quality_of=supervisor.quality_of))

    chat = ChatService.start(services.redis, services.db, settings)
    rt = AppRuntime(settings, services, bus, registry, presence, call_log, node, legs, metrics,
                    sampler, faults, fault_consumer, supervisor, chat, access, loop,
                    session_alive)
    # Each page's own getStats() -> the same store, as legs "<leg>@browser".
    rt.browser_stats = BrowserStats(metrics.record, busy=metrics.busy)
    rt.start_housekeeping()
    # Bot participants (videochat/bots/): hosted here, added by the call page or through Redis.
    rt.bots = start_bot_plane(services.redis, registry, loop, node)
    return rt


def _on_join(call_log: CallLog, presence: Presence,
             node: str) -> Callable[[Room, Participant], None]:
    def on_join(room: Room, p: Participant) -> None:
        call_log.participant_joined(room=room.name, call_id=room.call_id, participant_id=p.id,
                                    name=p.name, joined_at=p.joined_at, node=node)
        try:
            presence.join(room.name, p.id, p.name, p.joined_at)
        except Exception:  # noqa: BLE001 - Redis down: housekeeping re-publishes presence
            logger.warning("presence join failed for %s", p.name, exc_info=True)

    return on_join


def _on_leave(call_log: CallLog, presence: Presence, access: RoomAccess,
              legs: LegRegistry) -> Callable[[Room, Participant], None]:
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

    return on_leave


def _rebuilder(registry: RoomRegistry) -> Callable[[Participant], None]:
    def rebuild(p: Participant) -> None:
        # New component keys: that session's next run mounts fresh streamers (new peer
        # connections); the old ones were closed by the supervisor.
        p.publish_epoch += 1
        for slot in p.slots:
            slot.epoch += 1
        registry.wake([p.id])

    return rebuild
