"""Self-healing legs: notice a dead leg in seconds, rebuild it with backoff, tell the others.

Pure policy, no I/O: every class takes a monotonic `clock` (a `Callable[[], float]` such as
`time.monotonic`) and every method takes an optional `now`/`at` on that clock, so tests drive them
on a fake clock and the relay can feed timestamps it already has. Not thread-safe: drive each
object from one thread, normally the media event loop.

Design (why)
------------
* **Detect from media, not from ICE.** aioice notices a dead path only after ~30 s of failed consent
  checks, and at 100 % loss above ICE both ends keep saying `connected`. Silent freezes with both
  ends `connected` were also seen. So `MediaWatchdog` watches evidence that media actually arrives
  (a frame from the browser on a publish leg, a fresh receiver report on a subscribe leg): silent
  for `suspect_after_s` = 2 s -> *suspect* (the tile may dim; nothing is torn down, since a 2 s
  hiccup often heals by itself); silent for `dropped_after_s` = 2.5 s -> *dropped*. With the
  watchdog checked every 0.25-0.5 s, a dead leg is declared within 3 s of its last frame. RTCP
  arrives every 0.5-1.5 s and the slowest video rung is 10 fps, so 2 s of silence is never normal.
  `failed`/`closed` drop at once. The browser's `disconnected` also drops at once by default
  (`dropped_on_disconnected`), because streamlit-webrtc closes its peer connection on
  `disconnected`: the leg can never come back by itself. A leg that never delivers a first frame
  within `first_frame_timeout_s` is dropped too (a join or rebuild that silently failed).
  *Dropped is final* for a watchdog: the leg is being replaced, so late frames on it are counted
  but do not revive it (two legs racing to be "the" leg is exactly the bug seen with
  streamlit-webrtc's auto-start).
* **Rebuild, with LiveKit's backoff.** aiortc has no ICE restart, so recovery is a new peer
  connection. `Backoff` waits 0, 0.3, 1.2, 2.7, 4.8 s and then every 7 s between attempts (the
  schedule of LiveKit's `DefaultReconnectPolicy`): the first two retries are nearly immediate
  because most drops are short, later ones spread out so a long outage does not hammer the server.
  A delay is counted from the *end* of the previous attempt (its failure or its timeout), never from
  its start, so two rebuilds never overlap. It gives up after `max_total_s` = 60 s from the drop by
  default: longer than the 40 s blackout the benchmark injects plus one 7 s period and one attempt.
* **One state machine per leg.** `ReconnectController`: connected -> reconnecting(attempt n,
  next_at) -> connected | failed; failed -> reconnecting again only on the user's retry button.
  It records every episode (drop, attempts, outcome, durations) and emits `reconnect_started`,
  `reconnect_attempted`, `reconnect_succeeded` (with `duration_s`) and `reconnect_failed` as
  `CallEvent`s through an emit callback (normally `EventBus.emit`).
* **Reconnecting is not leaving.** For `grace_s` (Settings.reconnect_grace_s, 30 s) after a
  participant's legs dropped, the others see "reconnecting..." with the last frame or a
  placeholder; only after that "left". `GracePeriod` is that rule for one subject; `PresenceBoard`
  applies it to a room and emits `participant_reconnecting` / `participant_left` exactly once.
* **Glue in one place.** `LegSupervisor` wires one watchdog per leg generation to one controller:
  the relay feeds it frames and states and calls `tick()` a few times a second; `tick()` answers
  `REBUILD` (build a new peer connection now) or `GIVE_UP` (show "could not reconnect" with a
  retry button).

Event timestamps: `CallEvent.at` is wall time; the controllers convert a monotonic instant `t`
to wall time as `wall() - (clock() - t)`, so an event describes when the thing happened even if it
was processed a little later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from videochat.clocks import Monotonic, WallClock, utcnow
from videochat.events import CallEvent
from videochat.exceptions import ValidationError

logger = logging.getLogger(__name__)

Emit = Callable[[CallEvent], None]

CONNECTION_STATES = frozenset(
    {"new", "connecting", "connected", "disconnected", "failed", "closed"}
)


@dataclass(frozen=True)
class EventContext:
    """Who an event is about; combined with a kind and data into a `CallEvent`."""

    room: str
    participant: str | None = None
    call_id: str | None = None
    leg: str | None = None

    def event(self, kind: str, at: datetime, **data: Any) -> CallEvent:
        return CallEvent(kind=kind, room=self.room, participant=self.participant,
                         call_id=self.call_id, leg=self.leg, at=at, data=data)


def wall_at(clock: Monotonic, wall: WallClock, t: float) -> datetime:
    return wall() - timedelta(seconds=clock() - t)


def _positive(what: str, value: float) -> None:
    if not value > 0:
        raise ValidationError(what, value, "must be > 0")


# --------------------------------------------------------------------------------------- backoff
@dataclass(frozen=True)
class Backoff:
    """Delays between reconnect attempts; attempt numbers are 0-based."""

    delays_s: tuple[float, ...] = (0.0, 0.3, 1.2, 2.7, 4.8)
    then_every_s: float = 7.0
    max_attempts: int | None = None
    max_total_s: float | None = 60.0

    def __post_init__(self) -> None:
        if any(not d >= 0 for d in self.delays_s):
            raise ValidationError("backoff delays", self.delays_s, "must all be >= 0")
        _positive("backoff then_every_s", self.then_every_s)
        if self.max_attempts is None and self.max_total_s is None:
            raise ValidationError("backoff limits", None, "set max_attempts or max_total_s")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValidationError("backoff max_attempts", self.max_attempts, "must be >= 1")
        if self.max_total_s is not None:
            _positive("backoff max_total_s", self.max_total_s)

    def delay(self, attempt: int) -> float:
        """How long to wait before attempt number `attempt` (0 = the first one)."""
        if attempt < 0:
            raise ValidationError("backoff attempt", attempt, "must be >= 0")
        if attempt < len(self.delays_s):
            return self.delays_s[attempt]
        return self.then_every_s

    def schedule(self, attempts: int) -> list[float]:
        return [self.delay(i) for i in range(attempts)]

    def exhausted(self, attempts_made: int, elapsed_s: float) -> bool:
        """True if no further attempt may start, `elapsed_s` after the drop."""
        if self.max_attempts is not None and attempts_made >= self.max_attempts:
            return True
        if self.max_total_s is not None:
            return elapsed_s + self.delay(attempts_made) > self.max_total_s
        return False


# -------------------------------------------------------------------------------------- watchdog
class LegState(StrEnum):
    WAITING = "waiting"  # built, no frame yet
    FLOWING = "flowing"
    SUSPECT = "suspect"  # silent for a while, or the browser said `disconnected`
    DROPPED = "dropped"  # final: the leg must be rebuilt


@dataclass(frozen=True)
class Transition:
    from_state: LegState
    to_state: LegState
    at: float
    reason: str
    silent_for_s: float | None = None


class MediaWatchdog:
    """Per-leg liveness from frames actually received and from connection states."""

    def __init__(self, clock: Monotonic, suspect_after_s: float = 2.0, dropped_after_s: float = 2.5,
                 first_frame_timeout_s: float = 10.0, *, dropped_on_disconnected: bool = True,
                 started_at: float | None = None) -> None:
        _positive("watchdog suspect_after_s", suspect_after_s)
        _positive("watchdog first_frame_timeout_s", first_frame_timeout_s)
        if dropped_after_s < suspect_after_s:
            raise ValidationError("watchdog dropped_after_s", dropped_after_s,
                                  "must be >= suspect_after_s")
        self._clock = clock
        self.suspect_after_s = suspect_after_s
        self.dropped_after_s = dropped_after_s
        self.first_frame_timeout_s = first_frame_timeout_s
        self.dropped_on_disconnected = dropped_on_disconnected
        self.started_at = clock() if started_at is None else started_at
        self.state = LegState.WAITING
        self.connection = "new"
        self.frames = 0
        self.late_frames = 0  # frames that arrived after the leg was declared dropped
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.dropped_at: float | None = None
        self.drop_reason: str | None = None

    def _move(self, to: LegState, at: float, reason: str) -> Transition:
        silent = None if self.last_frame_at is None else max(0.0, at - self.last_frame_at)
        t = Transition(self.state, to, at, reason, silent)
        self.state = to
        if to is LegState.DROPPED:
            self.dropped_at = at
            self.drop_reason = reason
        logger.debug("leg %s -> %s at %.3f (%s)", t.from_state, to, at, reason)
        return t

    def silent_for(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        since = self.started_at if self.last_frame_at is None else self.last_frame_at
        return max(0.0, now - since)

    def frame_received(self, at: float | None = None) -> Transition | None:
        at = self._clock() if at is None else at
        if self.state is LegState.DROPPED:
            self.late_frames += 1
            return None
        self.frames += 1
        moved = None  # moved before recording the frame, so the transition tells the gap
        if self.state is LegState.WAITING:
            moved = self._move(LegState.FLOWING, at, "first frame")
        elif self.state is LegState.SUSPECT:
            moved = self._move(LegState.FLOWING, at, "media resumed")
        if self.first_frame_at is None:
            self.first_frame_at = at
        if self.last_frame_at is None or at > self.last_frame_at:
            self.last_frame_at = at
        return moved

    def connection_state(self, state: str, at: float | None = None) -> Transition | None:
        """Feed aiortc's `connectionState` or the one the browser reported."""
        if state not in CONNECTION_STATES:
            raise ValidationError("connection state", state,
                                  f"must be one of {sorted(CONNECTION_STATES)}")
        at = self._clock() if at is None else at
        self.connection = state
        if self.state is LegState.DROPPED:
            return None
        if state in ("failed", "closed"):
            return self._move(LegState.DROPPED, at, f"connection {state}")
        if state == "disconnected":
            if self.dropped_on_disconnected:
                return self._move(LegState.DROPPED, at, "connection disconnected")
            if self.state is LegState.FLOWING:
                return self._move(LegState.SUSPECT, at, "connection disconnected")
        return None

    def check(self, now: float | None = None) -> Transition | None:
        """Apply the timeouts; call a few times a second (detection lags by up to one period)."""
        now = self._clock() if now is None else now
        if self.state is LegState.DROPPED:
            return None
        if self.state is LegState.WAITING:
            if now - self.started_at >= self.first_frame_timeout_s:
                return self._move(LegState.DROPPED, now, "no first frame")
            return None
        silent = self.silent_for(now)
        if silent >= self.dropped_after_s:
            return self._move(LegState.DROPPED, now, "media stopped")
        if silent >= self.suspect_after_s and self.state is LegState.FLOWING:
            return self._move(LegState.SUSPECT, now, "media silent")
        return None


# ---------------------------------------------------------------------------------- grace period
class PresenceState(StrEnum):
    PRESENT = "present"
    RECONNECTING = "reconnecting"
    LEFT = "left"


@dataclass
class GracePeriod:
    """'Reconnecting...' for `grace_s` after a drop, then 'left'; cleared when media is back."""

    grace_s: float = 30.0
    since: float | None = None

    def __post_init__(self) -> None:
        _positive("grace_s", self.grace_s)

    def start(self, at: float) -> None:
        if self.since is None:  # a second drop inside the grace period does not extend it
            self.since = at

    def clear(self) -> None:
        self.since = None

    def remaining(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, self.since + self.grace_s - now)

    def expired(self, now: float) -> bool:
        return self.since is not None and now >= self.since + self.grace_s

    def status(self, now: float) -> PresenceState:
        if self.since is None:
            return PresenceState.PRESENT
        return PresenceState.LEFT if self.expired(now) else PresenceState.RECONNECTING


class PresenceBoard:
    """A room's view of who is present, reconnecting or gone; emits each change once."""

    def __init__(self, clock: Monotonic, grace_s: float = 30.0, *, room: str = "",
                 emit: Emit | None = None, wall: WallClock = utcnow) -> None:
        _positive("grace_s", grace_s)
        self._clock, self._wall, self._emit = clock, wall, emit
        self.room = room
        self.grace_s = grace_s
        self._grace: dict[str, GracePeriod] = {}
        self._left: set[str] = set()

    def _send(self, kind: str, who: str, at: float, **data: Any) -> None:
        if self._emit is not None:
            ctx = EventContext(self.room, participant=who)
            self._emit(ctx.event(kind, wall_at(self._clock, self._wall, at), **data))

    def joined(self, who: str, at: float | None = None) -> None:
        self._grace[who] = GracePeriod(self.grace_s)
        self._left.discard(who)

    def dropped(self, who: str, at: float | None = None) -> None:
        at = self._clock() if at is None else at
        grace = self._grace.setdefault(who, GracePeriod(self.grace_s))
        if who in self._left or grace.since is not None:
            return
        grace.start(at)
        self._send("participant_reconnecting", who, at, grace_s=self.grace_s)

    def recovered(self, who: str, at: float | None = None) -> None:
        at = self._clock() if at is None else at
        grace = self._grace.setdefault(who, GracePeriod(self.grace_s))
        if who in self._left:  # came back after being shown as gone: a rejoin
            self._left.discard(who)
            self._send("participant_joined", who, at, rejoined=True)
        grace.clear()

    def left(self, who: str, at: float | None = None) -> None:
        """A deliberate leave: no grace period."""
        at = self._clock() if at is None else at
        if who in self._left:
            return
        self._grace.pop(who, None)
        self._left.add(who)
        self._send("participant_left", who, at, reason="left")

    def status(self, who: str, now: float | None = None) -> PresenceState:
        now = self._clock() if now is None else now
        if who in self._left:
            return PresenceState.LEFT
        grace = self._grace.get(who)
        return PresenceState.PRESENT if grace is None else grace.status(now)

    def reconnecting_since(self, who: str) -> float | None:
        grace = self._grace.get(who)
        return None if grace is None or who in self._left else grace.since

    def expire(self, now: float | None = None) -> list[str]:
        """Participants whose grace ran out since the last call (each reported once)."""
        now = self._clock() if now is None else now
        gone = [who for who, g in self._grace.items() if who not in self._left and g.expired(now)]
        for who in gone:
            since = self._grace[who].since
            self._left.add(who)
            self._send("participant_left", who, now, reason="grace expired",
                       reconnecting_s=None if since is None else round(now - since, 3))
        return gone


# ---------------------------------------------------------------------------- reconnect control
class ReconnectState(StrEnum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclass
class ReconnectEpisode:
    """One drop and what followed; times are on the controller's monotonic clock."""

    dropped_at: float
    reason: str
    last_media_at: float | None = None
    attempt_times: list[float] = field(default_factory=list)
    ended_at: float | None = None
    outcome: str | None = None  # "succeeded" | "failed"

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.dropped_at

    @property
    def detection_s(self) -> float | None:
        return None if self.last_media_at is None else self.dropped_at - self.last_media_at


class ReconnectController:
    """connected -> reconnecting(attempt n, next_at) -> connected | failed, for one leg."""

    def __init__(self, clock: Monotonic, backoff: Backoff | None = None, grace_s: float = 30.0, *,
                 attempt_timeout_s: float = 5.0, emit: Emit | None = None,
                 context: EventContext | None = None, wall: WallClock = utcnow) -> None:
        _positive("attempt_timeout_s", attempt_timeout_s)
        self._clock, self._wall, self._emit = clock, wall, emit
        self.backoff = backoff or Backoff()
        self.grace = GracePeriod(grace_s)
        self.attempt_timeout_s = attempt_timeout_s
        self.context = context or EventContext(room="")
        self.state = ReconnectState.CONNECTED
        self.attempts = 0
        self.next_at: float | None = None
        self.attempt_started_at: float | None = None
        self.episodes: list[ReconnectEpisode] = []

    @property
    def episode(self) -> ReconnectEpisode | None:
        return self.episodes[-1] if self.episodes else None

    @property
    def in_flight(self) -> bool:
        return self.attempt_started_at is not None

    def _send(self, kind: str, at: float, **data: Any) -> None:
        if self._emit is not None:
            self._emit(self.context.event(kind, wall_at(self._clock, self._wall, at), **data))

    def _begin(self, now: float, reason: str, last_media_at: float | None) -> None:
        self.state = ReconnectState.RECONNECTING
        self.attempts = 0
        self.attempt_started_at = None
        self.next_at = now + self.backoff.delay(0)
        self.grace.start(now)
        ep = ReconnectEpisode(dropped_at=now, reason=reason, last_media_at=last_media_at)
        self.episodes.append(ep)
        logger.info("reconnect started for %s (%s)", self.context.leg, reason)
        detection = ep.detection_s
        self._send("reconnect_started", now, reason=reason,
                   detection_s=None if detection is None else round(detection, 3))

    def on_dropped(self, now: float | None = None, *, reason: str = "media stopped",
                   last_media_at: float | None = None) -> bool:
        """The leg died; starts an episode unless one is already running. True if it started."""
        now = self._clock() if now is None else now
        if self.state is not ReconnectState.CONNECTED:
            return False
        self._begin(now, reason, last_media_at)
        return True

    def due(self, now: float | None = None) -> bool:
        """Time to start an attempt? Also the controller's tick: it times out a stuck attempt."""
        now = self._clock() if now is None else now
        if self.state is not ReconnectState.RECONNECTING:
            return False
        started = self.attempt_started_at
        if started is not None:
            if now - started < self.attempt_timeout_s:
                return False
            self.attempt_failed(now, reason="attempt timed out")
            if self.state is not ReconnectState.RECONNECTING:
                return False
        return self.next_at is not None and now >= self.next_at

    def attempted(self, now: float | None = None) -> int:
        """An attempt (a new peer connection) starts now; returns its 1-based number."""
        now = self._clock() if now is None else now
        ep = self.episode
        if self.state is not ReconnectState.RECONNECTING or ep is None:
            logger.warning("attempt reported while %s; ignored", self.state)
            return 0
        planned = self.backoff.delay(self.attempts)
        self.attempts += 1
        self.attempt_started_at = now
        self.next_at = None
        ep.attempt_times.append(now)
        self._send("reconnect_attempted", now, attempt=self.attempts,
                   since_drop_s=round(now - ep.dropped_at, 3), delay_s=planned)
        return self.attempts

    def attempt_failed(self, now: float | None = None, *, reason: str = "attempt failed") -> None:
        """The attempt in flight did not bring media back: schedule the next one or give up."""
        now = self._clock() if now is None else now
        ep = self.episode
        if self.state is not ReconnectState.RECONNECTING or not self.in_flight or ep is None:
            return
        self.attempt_started_at = None
        if self.backoff.exhausted(self.attempts, now - ep.dropped_at):
            self.state = ReconnectState.FAILED
            self.next_at = None
            ep.ended_at, ep.outcome = now, "failed"
            logger.warning("reconnect failed for %s after %d attempts", self.context.leg,
                           self.attempts)
            self._send("reconnect_failed", now, attempts=self.attempts, reason=reason,
                       duration_s=round(now - ep.dropped_at, 3))
            return
        self.next_at = now + self.backoff.delay(self.attempts)

    def on_recovered(self, now: float | None = None) -> bool:
        """Media flows again (on a rebuilt leg, or the old one). True if an episode ended."""
        now = self._clock() if now is None else now
        ep = self.episode
        if self.state is ReconnectState.CONNECTED or ep is None:
            return False
        self.state = ReconnectState.CONNECTED
        self.attempt_started_at = self.next_at = None
        self.grace.clear()
        late = ep.outcome == "failed"
        ep.ended_at, ep.outcome = now, "succeeded"
        outage = None if ep.last_media_at is None else round(now - ep.last_media_at, 3)
        logger.info("reconnected %s in %.2f s", self.context.leg, now - ep.dropped_at)
        self._send("reconnect_succeeded", now, attempts=self.attempts,
                   duration_s=round(now - ep.dropped_at, 3), outage_s=outage, after_failure=late)
        return True

    def retry(self, now: float | None = None) -> bool:
        """The user pressed "retry" after a failure: a fresh episode with a fresh backoff."""
        now = self._clock() if now is None else now
        if self.state is not ReconnectState.FAILED:
            return False
        self.state = ReconnectState.CONNECTED
        self.grace.clear()
        self._begin(now, "user retry", None)
        return True

    def presence(self, now: float | None = None) -> PresenceState:
        """How the others should show this leg's participant."""
        now = self._clock() if now is None else now
        if self.state is ReconnectState.CONNECTED:
            return PresenceState.PRESENT
        return self.grace.status(now)


# ------------------------------------------------------------------------------------ supervisor
class Action(StrEnum):
    REBUILD = "rebuild"  # build a new peer connection for this leg now
    GIVE_UP = "give_up"  # show "could not reconnect" and a retry button


class LegSupervisor:
    """One leg's watchdog and controller wired together; the relay calls `tick()` at 2-4 Hz.

    Each rebuild starts a new *generation* with a fresh watchdog whose first-frame timeout is the
    attempt timeout; pass `generation=` with frames/states so a late frame from an old peer
    connection cannot pass for the new one. On REBUILD, close the previous generation's peer
    connection. One exception to "dropped is final": an attempt that timed out without a first
    frame is kept if its first frame arrives before the next attempt starts (a rebuild begun in
    an outage connects when the path returns, since ICE retransmits its checks for ~30 s).
    """

    def __init__(self, clock: Monotonic, *, backoff: Backoff | None = None, grace_s: float = 30.0,
                 attempt_timeout_s: float = 5.0, suspect_after_s: float = 2.0,
                 dropped_after_s: float = 2.5, first_frame_timeout_s: float = 10.0,
                 dropped_on_disconnected: bool = True, emit: Emit | None = None,
                 context: EventContext | None = None, wall: WallClock = utcnow,
                 outage_attempt_timeout_s: float | None = None) -> None:
        self._clock = clock
        if outage_attempt_timeout_s is not None:
            _positive("outage_attempt_timeout_s", outage_attempt_timeout_s)
        # After "media stopped" (the path may be down, the connection still up), an attempt
        # that has not delivered within this is replaced by a fresh one: Chromium pings a
        # connection that got no answer for ~5 s only seconds apart, so a rebuild begun early
        # in an outage came back ~3 s after the path did, one begun late within ~0.5 s.
        self.outage_attempt_timeout_s = outage_attempt_timeout_s
        self._episode_reason: str | None = None
        self._watch_args: dict[str, Any] = {
            "suspect_after_s": suspect_after_s, "dropped_after_s": dropped_after_s,
            "dropped_on_disconnected": dropped_on_disconnected}
        self.attempt_timeout_s = attempt_timeout_s
        self.controller = ReconnectController(clock, backoff, grace_s,
                                              attempt_timeout_s=attempt_timeout_s, emit=emit,
                                              context=context, wall=wall)
        self.generation = 0
        self.watchdog = MediaWatchdog(clock, first_frame_timeout_s=first_frame_timeout_s,
                                      **self._watch_args)
        self._gave_up = False

    @property
    def state(self) -> ReconnectState:
        return self.controller.state

    def _current(self, generation: int | None) -> bool:
        return generation is None or generation == self.generation

    def _after(self, t: Transition | None, at: float) -> None:
        if t is not None and t.to_state is LegState.FLOWING:
            self.controller.on_recovered(at)

    def frame_received(self, at: float | None = None, *, generation: int | None = None) -> None:
        if not self._current(generation):
            return
        at = self._clock() if at is None else at
        dog = self.watchdog
        if (dog.state is LegState.DROPPED and dog.first_frame_at is None
                and self.generation > 0 and not self.controller.in_flight
                and self.controller.state is not ReconnectState.CONNECTED):
            # A rebuild begun during an outage timed out, but ICE kept checking and it came
            # through before the next attempt replaced it: keep it rather than start over.
            self.watchdog = MediaWatchdog(self._clock, first_frame_timeout_s=self.attempt_timeout_s,
                                          started_at=at, **self._watch_args)
        self._after(self.watchdog.frame_received(at), at)

    def connection_state(self, state: str, at: float | None = None, *,
                         generation: int | None = None) -> None:
        if self._current(generation):
            at = self._clock() if at is None else at
            self._after(self.watchdog.connection_state(state, at), at)

    def tick(self, now: float | None = None) -> Action | None:
        now = self._clock() if now is None else now
        self.watchdog.check(now)
        ctl = self.controller
        if self.watchdog.state is LegState.DROPPED:
            dropped_at = self.watchdog.dropped_at
            if ctl.state is ReconnectState.CONNECTED and dropped_at is not None:
                self._episode_reason = self.watchdog.drop_reason or "dropped"
                ctl.on_dropped(dropped_at, reason=self._episode_reason,
                               last_media_at=self.watchdog.last_frame_at)
            elif ctl.in_flight:
                ctl.attempt_failed(now, reason=self.watchdog.drop_reason or "attempt failed")
        if ctl.due(now):
            ctl.attempted(now)
            self.generation += 1
            self.watchdog = MediaWatchdog(self._clock, first_frame_timeout_s=self._attempt_limit(),
                                          started_at=now, **self._watch_args)
            return Action.REBUILD
        if ctl.state is ReconnectState.FAILED and not self._gave_up:
            self._gave_up = True
            return Action.GIVE_UP
        return None

    def _attempt_limit(self) -> float:
        limit = self.attempt_timeout_s
        if self.outage_attempt_timeout_s is not None and self._episode_reason == "media stopped":
            limit = min(limit, self.outage_attempt_timeout_s)
        return limit

    def retry(self, now: float | None = None) -> bool:
        """The user's retry button after GIVE_UP; the next `tick()` answers REBUILD."""
        self._gave_up = False
        return self.controller.retry(now)
