"""Who may sit where: joining a room (passcode rules) and getting one's own seat back.

Two ways in:
- `join(room, name, passcode)`, from the join form or a link: the passcode rules (a protected
  room needs its passcode; whoever opens a room may protect it), and a name that belongs to
  someone expected back after a restart is not handed to a newcomer ("ana" gets "ana (2)").
- `rejoin(token)`, from a tab that was in a call (`videochat.call.rejoin`): a genuine token whose
  seat is still live in presence gets that very seat back (same participant id and name), with
  no passcode asked, since the token proves the holder was admitted. A seat is live while its
  presence entry is fresh (`Presence.stale_after_s`, refreshed every few seconds by the process
  hosting it): someone who left, or whose call ended, gets `RejoinRefused` saying so. If Redis
  cannot be reached, a genuine signature alone is accepted (better a seat back than none).

When the room is not open in this process but presence still holds its call (the process that
hosted it died or was restarted), the first person in continues that call: same call id,
a `server_restart` event bounding the gap, one call in the call log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from videochat.call.access import RoomAccess
from videochat.call.presence import ParticipantInfo, Presence
from videochat.call.rejoin import RejoinClaim, RejoinTokens
from videochat.exceptions import RejoinRefused
from videochat.media.participant import Participant, validate_display_name, validate_room_name
from videochat.media.room import ResumedCall, RoomRegistry

logger = logging.getLogger(__name__)


class Seats:
    def __init__(self, registry: RoomRegistry, presence: Presence, access: RoomAccess,
                 tokens: RejoinTokens, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.presence = presence
        self.access = access
        self.tokens = tokens
        self.clock = clock
        # One seat decision per room at a time: two tabs of one restarted call arriving
        # together must continue one call, not start two.
        self._lock = threading.Lock()

    def join(self, room: str, name: str, session_id: str | None,
             passcode: str = "") -> Participant:
        """Seat a person from the join form or a link. Raises ValidationError (bad room or
        name), AccessDenied / RateLimited (passcode), RoomFull, BackendUnavailable."""
        room = validate_room_name(room)
        name = validate_display_name(name)
        with self._lock:
            others = self._others(room)
            existing = self.registry.rooms.get(room)
            opening = (existing is None or not existing.participants) and not others
            if self.access.requires_passcode(room):
                self.access.check(room, passcode or None)
            elif passcode and opening:
                self.access.set_passcode(room, passcode)  # whoever opens the room may protect it
            return self.registry.join(
                room, name, session_id, resume=self._resumable(room, others),
                reserved=[i.name for i in (others or {}).values()])

    def rejoin(self, token: object, session_id: str | None) -> Participant:
        """The seat `token` was issued for, handed to `session_id`. Idempotent: the same token
        twice (a rerun, a reload) gives the same participant. Raises RejoinRefused."""
        claim = self.tokens.decode(token)
        with self._lock:
            seated = self.registry.find(claim.participant_id)
            if seated is not None:
                return self._seat(claim, session_id, None)
            others = self._others(claim.room)
            if others is not None and claim.participant_id not in others:
                raise RejoinRefused(
                    f"your seat in room {claim.room!r} is gone: you left, or the call ended "
                    f"while the server was away (longer than {self.presence.stale_after_s:g} s)."
                    " Join again below.")
            if others is None:
                logger.warning("rejoin of %s in %s on its signature alone: Redis unavailable",
                               claim.name, claim.room)
            return self._seat(claim, session_id, self._resumable(claim.room, others))

    def token_for(self, participant: Participant) -> str:
        return self.tokens.issue(RejoinClaim(participant.room, participant.id,
                                             participant.name, participant.joined_at))

    def _seat(self, claim: RejoinClaim, session_id: str | None,
              resume: ResumedCall | None) -> Participant:
        me = self.registry.join(claim.room, claim.name, session_id,
                                participant_id=claim.participant_id, joined_at=claim.issued,
                                resume=resume)
        logger.info("%s rejoined room %s by token", me.name, me.room)
        return me

    def _others(self, room: str) -> dict[str, ParticipantInfo] | None:
        """Live presence entries of `room` not seated in this process; None if Redis is down."""
        try:
            live = self.presence.participants(room)
        except redis.RedisError:
            return None
        return {pid: info for pid, info in live.items() if self.registry.find(pid) is None}

    def _resumable(self, room: str,
                   others: dict[str, ParticipantInfo] | None) -> ResumedCall | None:
        """The call presence still holds for `room`, if this process does not host it yet."""
        if self.registry.rooms.get(room) is not None or not others:
            return None
        calls = [i for i in others.values() if i.call_id]
        if not calls:
            return None
        last = max(calls, key=lambda i: i.seen)
        started = last.call_started_at if last.call_started_at is not None else last.joined_at
        return ResumedCall(call_id=str(last.call_id), started_at=started,
                           gap_from=last.seen, gap_to=self.clock())
