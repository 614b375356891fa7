"""Rooms of one app process: who is in, who receives whom; no I/O.

All media of a room lives in one process (one asyncio loop), so a room is pinned to the process
that hosts its first participant; `presence` publishes membership in Redis for the others.
The registry is thread-safe: Streamlit runs each session's script in its own thread.

Side effects go through injected callables: `wake(session_ids)` reruns other sessions' pages,
`emit(CallEvent)` records events, `on_join` / `on_leave` persist presence and the call log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from videochat.events import CallEvent
from videochat.exceptions import NotFound, ValidationError
from videochat.media.participant import (
    Participant,
    validate_display_name,
    validate_room_name,
)

logger = logging.getLogger(__name__)

Waker = Callable[[Iterable[str]], object]
Emit = Callable[[CallEvent], None]
Hook = Callable[["Room", Participant], None]
Defer = Callable[[float, Callable[[], None]], None]

SPARE_DELAY_S = 3.0


def _timer(delay: float, fn: Callable[[], None]) -> None:
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()


class RoomFull(ValidationError):
    pass


@dataclass(frozen=True)
class ResumedCall:
    """A call that was going on in a process that is gone (found in presence): a participant
    coming back continues it instead of starting a new one.

    `gap_from` is when the old process was last seen alive, `gap_to` when the first participant
    came back; the two bound the band the Diagnostics page draws.
    """

    call_id: str
    started_at: float
    gap_from: float
    gap_to: float


@dataclass
class Room:
    name: str
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    participants: dict[str, Participant] = field(default_factory=dict)

    def peers(self, participant_id: str) -> list[Participant]:
        return [p for pid, p in self.participants.items() if pid != participant_id]

    def unique_name(self, name: str, reserved: Iterable[str] = ()) -> str:
        """Two tabs with one name are told apart: 'ana', 'ana (2)', 'ana (3)'. `reserved`
        names belong to people expected back (a restart): a newcomer does not take them."""
        taken = {p.name for p in self.participants.values()} | set(reserved)
        if name not in taken:
            return name
        n = 2
        while f"{name} ({n})" in taken:
            n += 1
        return f"{name} ({n})"


def _noop_hook(room: Room, participant: Participant) -> None:
    return None


class RoomRegistry:
    def __init__(
        self,
        *,
        max_participants: int = 6,
        wake: Waker | None = None,
        emit: Emit | None = None,
        on_join: Hook = _noop_hook,
        on_leave: Hook = _noop_hook,
        clock: Callable[[], float] = time.monotonic,
        defer: Defer = _timer,
        spare_delay_s: float = SPARE_DELAY_S,
    ) -> None:
        self._defer = defer
        self.spare_delay_s = spare_delay_s
        self.max_participants = max_participants
        self._wake = wake or (lambda ids: None)
        self._emit = emit or (lambda e: None)
        self._on_join = on_join
        self._on_leave = on_leave
        self.clock = clock
        self._lock = threading.RLock()
        self.rooms: dict[str, Room] = {}
        self._by_id: dict[str, Participant] = {}

    # -- membership ---------------------------------------------------------------------
    def join(self, room_name: str, display_name: str, session_id: str | None = None, *,
             participant_id: str | None = None, joined_at: float | None = None,
             resume: ResumedCall | None = None, reserved: Iterable[str] = ()) -> Participant:
        """Seat someone in a room (created on the first join).

        With `participant_id` (a rejoin) the person gets their own id and name back; if that
        id is already seated here (the same tab asking twice, or reconnected under a new
        session), the seat is handed to `session_id`. With `resume`, a room created by this
        join continues that call (`server_restart` event) instead of starting a new one.
        """
        room_name = validate_room_name(room_name)
        if participant_id is None:
            display_name = validate_display_name(display_name)
        # else: the name this participant was seated under ("ana (2)"), from a signed token
        with self._lock:
            seated = self._by_id.get(participant_id) if participant_id else None
            if seated is not None:
                if seated.room != room_name:
                    raise ValidationError("participant", participant_id,
                                          f"is seated in room {seated.room!r}, not {room_name!r}")
                seated.session_id = session_id  # seat takeover by its own participant
                return seated
            room = self.rooms.get(room_name)
            restarted = None
            if room is None:
                if resume is not None:
                    room = Room(room_name, call_id=resume.call_id, started_at=resume.started_at)
                    restarted = resume
                else:
                    room = Room(room_name)
                self.rooms[room_name] = room
                if restarted is None:
                    self._emit(CallEvent("call_started", room_name, call_id=room.call_id))
            if len(room.participants) >= self.max_participants:
                if not room.participants:
                    del self.rooms[room_name]
                raise RoomFull("room", room_name,
                               f"is full ({self.max_participants} participants at most)")
            if participant_id is not None:
                # Their own name back, unless someone live took it meanwhile.
                name = room.unique_name(display_name)
                me = Participant(room_name, name, session_id, id=participant_id)
            else:
                me = Participant(room_name, room.unique_name(display_name, reserved), session_id)
            if joined_at is not None:
                me.joined_at = joined_at
            peers = room.peers(me.id)
            room.participants[me.id] = me
            self._by_id[me.id] = me
            for peer in peers:
                # Both directions at once: my slot for them, their spare for me.
                me.free_slot().bind(peer)
                peer.free_slot().bind(me)
                peer.free_slot()  # keep a spare for the next joiner
            me.free_slot()
            settle = self.clock() + self.spare_delay_s
            for p in (me, *peers):
                p.spare_not_before = settle
        if restarted is not None:
            self._emit(CallEvent("server_restart", room_name, call_id=room.call_id, data={
                "gap_from": restarted.gap_from, "gap_to": restarted.gap_to,
                "gap_s": round(restarted.gap_to - restarted.gap_from, 3)}))
        data: dict[str, object] = {"participant_id": me.id}
        if participant_id is not None:
            data["rejoined"] = True
        self._emit(CallEvent("participant_joined", room_name, me.name, room.call_id, data=data))
        self._safe(self._on_join, room, me)
        self._wake_peers(room, me.id)
        ids = [me.id, *(p.id for p in peers)]
        self._defer(self.spare_delay_s + 0.05, lambda: self.wake(ids))
        return me

    def leave(self, participant_id: str, reason: str = "left") -> Participant | None:
        with self._lock:
            me = self._by_id.pop(participant_id, None)
            if me is None:
                return None
            room = self.rooms[me.room]
            room.participants.pop(participant_id, None)
            for peer in room.participants.values():
                slot = peer.slot_for(participant_id)
                if slot is not None:
                    slot.bind(None)
            me.set_state("left", self.clock())
            empty = not room.participants
            if empty:
                del self.rooms[room.name]
        me.close()
        self._emit(CallEvent("participant_left", room.name, me.name, room.call_id,
                             data={"participant_id": me.id, "reason": reason}))
        self._safe(self._on_leave, room, me)
        if empty:
            self._emit(CallEvent("call_ended", room.name, call_id=room.call_id))
        else:
            self._wake_peers(room, participant_id)
        return me

    def set_state(self, participant_id: str, state: str) -> None:
        me = self._by_id.get(participant_id)
        if me is None or state not in ("joined", "reconnecting"):
            return
        if me.set_state(state, self.clock()):  # type: ignore[arg-type]
            room = self.rooms.get(me.room)
            if state == "reconnecting" and room is not None:
                self._emit(CallEvent("participant_reconnecting", me.room, me.name, room.call_id))
            if room is not None:
                self._wake_peers(room, participant_id)

    def set_media(self, participant_id: str, *, camera_on: bool, mic_on: bool) -> bool:
        """The person switched their camera or microphone: the others' tiles say so."""
        me = self._by_id.get(participant_id)
        if me is None or (me.camera_on, me.mic_on) == (camera_on, mic_on):
            return False
        me.camera_on, me.mic_on = camera_on, mic_on
        room = self.rooms.get(me.room)
        if room is not None:
            self._emit(CallEvent("media_switched", me.room, me.name, room.call_id,
                                 data={"camera_on": camera_on, "mic_on": mic_on}))
            self._wake_peers(room, participant_id)
        return True

    # -- queries ------------------------------------------------------------------------
    def get(self, participant_id: str) -> Participant:
        p = self._by_id.get(participant_id)
        if p is None:
            raise NotFound(f"participant {participant_id!r} is not in any room of this server")
        return p

    def find(self, participant_id: str | None) -> Participant | None:
        return self._by_id.get(participant_id) if participant_id else None

    def room_of(self, participant: Participant) -> Room | None:
        return self.rooms.get(participant.room)

    def participants(self) -> list[Participant]:
        with self._lock:
            return list(self._by_id.values())

    def wake(self, participant_ids: Iterable[str]) -> None:
        sessions = [p.session_id for pid in participant_ids
                    if (p := self._by_id.get(pid)) and p.session_id]
        if sessions:
            self._wake(sessions)

    # -- liveness -----------------------------------------------------------------------
    def reap(self, is_alive: Callable[[str], bool], grace_s: float) -> list[str]:
        """Mark participants whose tab is gone as reconnecting, and remove them after grace."""
        gone = []
        now = self.clock()
        for me in self.participants():
            alive = me.session_id is None or is_alive(me.session_id)
            if alive:
                # Undo only what session loss did: a media reconnect (the supervisor's) is not
                # over just because the tab is still open.
                if me.state == "reconnecting" and me.session_lost:
                    me.session_lost = False
                    self.set_state(me.id, "joined")
                continue
            if me.state == "joined":
                me.session_lost = True
                self.set_state(me.id, "reconnecting")
            elif me.state == "reconnecting" and now - me.state_since >= grace_s:
                gone.append(me.id)
        for pid in gone:
            self.leave(pid, reason="session_lost")
        return gone

    def _wake_peers(self, room: Room, participant_id: str) -> None:
        self.wake(p.id for p in room.peers(participant_id))

    def _safe(self, hook: Hook, room: Room, participant: Participant) -> None:
        try:
            hook(room, participant)
        except Exception:  # noqa: BLE001 - persistence trouble must not break the call
            logger.exception("room hook %s failed", getattr(hook, "__name__", hook))
