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
from videochat.call.rejoin import RejoinTokens
from videochat.call.seats import Seats
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
# Presence says which seats are live for a restarted process (videochat/call/seats.py) and
# when the old one was last alive (the start of the gap drawn in Diagnostics): refresh often.
PRESENCE_REFRESH_S = 2.0
STALLED_CHECK_S = 10.0
SHUTDOWN_BUDGET_S = 8.0
"""Of the 10 s a graceful stop may take (issue 17): the server's own shutdown needs the rest."""

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
    seats: Seats | None = None
    bots: BotConsumer | None = None
    chat_rooms: dict[str, Callable[[], None]] = field(default_factory=dict)
    housekeeping: Housekeeping | None = None
    health: ProcessHealth | None = None
    stopping: bool = False
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

    def shut_down(self, budget_s: float = SHUTDOWN_BUDGET_S) -> dict[str, bool]:
        """A graceful stop (SIGTERM, Ctrl-C): flush what is buffered, keep every call open
        for the participants coming back to the next process (nobody is reaped, presence is
        left as housekeeping last wrote it), hand the embedded servers over.
        Each step gets what is left of `budget_s`; returns which steps completed."""
        self.stopping = True
        return shut_down_steps(self._shutdown_steps(), budget_s)

    def _shutdown_steps(self) -> list[tuple[str, Callable[[float], object]]]:
        def chat(left: float) -> None:
            self.chat.stop(timeout=left)

        def call_log(left: float) -> bool:
            done = self.call_log.flush(timeout=left)
            self.call_log.close()
            return done

        def workers(_: float) -> None:
            # No reaping while stopping: nobody left, the server did. All asked at once: the
            # consumers each sit in a 1 s stream read.
            running: list[BackgroundWorker] = [
                w for w in (self.housekeeping, self.fault_consumer, self.bots, self.health) if w]
            for worker in running:
                worker.request_stop()
            for worker in running:
                worker.stop()  # the health worker writes its last figures on the way

        steps: list[tuple[str, Callable[[float], object]]] = [
            ("workers", workers),
            ("sampler", lambda left: self.sampler.stop(timeout=min(left, 1.0))),
            ("chat", chat),
            ("call log", call_log),
            ("metrics", lambda left: self.metrics.close(timeout=left)),
        ]
        return steps + services_shutdown_steps(self.services)



def services_shutdown_steps(services: Services) -> list[tuple[str, Callable[[float], object]]]:
    def embedded(_: float) -> None:
        if services.embedded is not None:
            handover = services.settings.handover_s
            services.embedded.release(handover_s=handover if handover > 0 else None)

    return [("clients", lambda _: services.close()), ("embedded servers", embedded)]


def shut_down_steps(steps: list[tuple[str, Callable[[float], object]]],
                    budget_s: float) -> dict[str, bool]:
    """Run each step with what is left of the budget (at least a little); a failing or
    overrunning step is logged and the next one still runs."""
    deadline = time.monotonic() + budget_s
    done: dict[str, bool] = {}
    for name, step in steps:
        left = max(0.2, deadline - time.monotonic())
        started = time.monotonic()
        try:
            result = step(left)
            done[name] = result is not False
        except Exception:  # noqa: BLE001 - the next step (and the exit) must still happen
            logger.exception("shutdown step %s failed", name)
            done[name] = False
        logger.info("shutdown: %s %s in %.2f s", name, "done" if done[name] else "INCOMPLETE",
                    time.monotonic() - started)
    return done


class Housekeeping(BackgroundWorker):
    """Once a second: reap closed tabs after the grace period; every 2 s refresh presence;
    every 10 s close connections nobody registered. Must survive backend outages."""

    def __init__(self, rt: AppRuntime) -> None:
        super().__init__(thread_name="rooms-housekeeping", label="rooms housekeeping",
                         backend_errors=(), join_timeout_s=2.0, interval_s=1.0,
                         error_pause_s=1.0)
        self.rt = rt
        self._last_touch = 0.0
        self._last_stalled_check = 0.0

    def run_round(self) -> None:
        rt = self.rt
        # A closed tab ends its Streamlit session; the grace keeps a websocket blip (laptop
        # sleep, server restart) from counting as leaving.
        rt.registry.reap(rt.session_alive, rt.settings.reconnect_grace_s)
        if time.monotonic() - self._last_stalled_check > STALLED_CHECK_S:
            self._last_stalled_check = time.monotonic()
            self._close_stalled_connections()
        if time.monotonic() - self._last_touch > PRESENCE_REFRESH_S:
            self._last_touch = time.monotonic()
            for p in rt.registry.participants():
                room = rt.registry.room_of(p)
                rt.presence.touch(p.room, p.id, p.name, p.joined_at,
                                  room.call_id if room else None,
                                  room.started_at if room else None)

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
    health = ProcessHealth(services.db, node=node, loop=loop, legs=legs,
                           stalled_after_s=STALLED_AFTER_S,
                           retention_days=settings.metrics_retention_days).start()
    registry = RoomRegistry(
        max_participants=settings.max_participants,
        wake=wake,
        emit=bus.emit,
        on_join=_on_join(call_log, presence, node),
        on_leave=_on_leave(call_log, presence, access, legs),
    )

    # What the previous process left open (a crash or a deploy), closed before the fault
    # consumer would re-apply its faults.
    _close_previous_process(services, node, bus)

    # Fault command -> fault consumer -> injector -> legs.
    faults, fault_consumer = start_fault_plane(services, loop, bus, node)
    legs.add_listener(faults.leg_listener)

    # Legs -> stats sampler -> metrics store (-> diagnostics charts) and the supervisor.
    sampler = Sampler(None, metrics.record)
    supervisor = CallSupervisor(registry, legs, emit=bus.emit, faults=faults,
                                rebuild=_rebuilder(registry), counter_of=sampler.counter,
                                grace_s=settings.reconnect_grace_s)
    sampler.add_sink(supervisor.on_sample)
    legs.add_listener(sampler.leg_listener(quality_of=supervisor.quality_of,
                                           delivery_of=supervisor.delivery_of))

    chat = ChatService.start(services.redis, services.db, settings)
    rt = AppRuntime(settings, services, bus, registry, presence, call_log, node, legs, metrics,
                    sampler, faults, fault_consumer, supervisor, chat, access, loop,
                    session_alive)
    rt.health = health
    rt.seats = Seats(registry, presence, access,
                     RejoinTokens.from_secret_or_folder(settings.rejoin_secret, settings.state_dir))
    # Each page's own getStats() -> the same store, as legs "<leg>@browser".
    rt.browser_stats = BrowserStats(metrics.record, busy=metrics.busy)
    rt.start_housekeeping()
    # Bot participants (videochat/bots/): hosted here, added by the call page or through Redis.
    rt.bots = start_bot_plane(services.redis, registry, loop, node)
    _built.append(rt)
    return rt


_built: list[AppRuntime] = []


def _close_previous_process(services: Services, node: str, bus: EventBus) -> None:
    """Faults this node was applying end (reason `server_restart`), QA runs whose runner is
    gone fail ("app restarted during run"), and the new boot is recorded for live runners."""
    from videochat.faults.restart import end_interrupted_faults
    from videochat.qa import run_status

    end_interrupted_faults(services, node, bus.emit)
    run_status.fail_interrupted(services.db)
    try:
        run_status.record_boot(services.redis, node)
    except Exception:  # noqa: BLE001 - Redis down: runners then cannot tell; the app starts
        logger.warning("could not record this process's boot", exc_info=True)


def built_runtime() -> AppRuntime | None:
    """The runtime this process built, if any (the shutdown hook must not build one)."""
    return _built[-1] if _built else None


def _on_join(call_log: CallLog, presence: Presence,
             node: str) -> Callable[[Room, Participant], None]:
    def on_join(room: Room, p: Participant) -> None:
        call_log.participant_joined(room=room.name, call_id=room.call_id, participant_id=p.id,
                                    name=p.name, joined_at=p.joined_at, node=node)
        try:
            presence.join(room.name, p.id, p.name, p.joined_at, room.call_id, room.started_at)
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
