"""A participant: one person (one browser tab) in a room, its published media and its slots.

A participant publishes once (camera + microphone into two `TrackHub`s) and receives every
other participant through *slots*: a slot is one receive-only connection (video + audio
`RelayTrack`) that the server binds to a publisher. One slot is always kept spare, bound to
nobody, so that when someone joins, every peer's spare is bound to the joiner at once and
media flows without waiting for the peer's page to rerun and negotiate.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Literal

from videochat.exceptions import InvalidDisplayName, InvalidRoomName
from videochat.media.relay import RelayTrack, TrackHub

ROOM_RULE = "1-40 characters: letters, digits, '-' and '_' (no spaces)"
NAME_RULE = "1-32 characters: letters, digits, spaces, and . - _ ' (no leading/trailing space)"
_ROOM = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_NAME_CHARS = set(" .-_'")

ParticipantState = Literal["joined", "reconnecting", "left"]


def validate_room_name(value: str) -> str:
    if not isinstance(value, str) or not _ROOM.match(value):
        raise InvalidRoomName("room name", value, ROOM_RULE)
    return value


def validate_display_name(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidDisplayName("display name", value, NAME_RULE)
    text = unicodedata.normalize("NFC", value)
    ok = (
        1 <= len(text) <= 32
        and text == text.strip()
        and all(c.isalnum() or c in _NAME_CHARS for c in text)
        and "  " not in text
    )
    if not ok:
        raise InvalidDisplayName("display name", value, NAME_RULE)
    return text


@dataclass
class Slot:
    index: int
    owner_id: str
    video: RelayTrack
    audio: RelayTrack
    publisher_id: str | None = None
    epoch: int = 0  # bumped to rebuild this slot's connection (new component key)

    @classmethod
    def create(cls, owner_id: str, index: int) -> Slot:
        name = f"{owner_id[:8]}/{index}"
        return cls(index, owner_id, RelayTrack("video", name), RelayTrack("audio", name))

    def bind(self, publisher: Participant | None) -> None:
        self.publisher_id = publisher.id if publisher else None
        self.video.bind(publisher.video_hub if publisher else None)
        self.audio.bind(publisher.audio_hub if publisher else None)

    def close(self) -> None:
        self.bind(None)
        self.video.stop()
        self.audio.stop()


@dataclass
class Participant:
    room: str
    name: str
    session_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    joined_at: float = field(default_factory=time.time)
    state: ParticipantState = "joined"
    state_since: float = field(default_factory=time.monotonic)
    publish_epoch: int = 0
    session_lost: bool = False  # "reconnecting" because the tab's session went away
    # A new spare connection is opened only after a join settles: negotiating it at the same
    # moment as the legs a join needs would slow those down (measured: 2 cores, 3 legs).
    spare_not_before: float = 0.0
    # The person's own switches: shown to the others on their tiles, applied to the published
    # tracks by the page (a disabled track sends black frames / silence, the call stays up).
    camera_on: bool = True
    mic_on: bool = True
    slots: list[Slot] = field(default_factory=list)
    video_hub: TrackHub = field(init=False)
    audio_hub: TrackHub = field(init=False)

    def __post_init__(self) -> None:
        self.video_hub = TrackHub("video", self.name)
        self.audio_hub = TrackHub("audio", self.name)

    def slot_for(self, publisher_id: str) -> Slot | None:
        return next((s for s in self.slots if s.publisher_id == publisher_id), None)

    def slot_at(self, index: int | None) -> Slot | None:
        return next((s for s in self.slots if s.index == index), None)

    def free_slot(self) -> Slot:
        """The lowest free slot, creating one when all are bound."""
        for slot in self.slots:
            if slot.publisher_id is None:
                return slot
        slot = Slot.create(self.id, len(self.slots))
        self.slots.append(slot)
        return slot

    def bound_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.publisher_id is not None]

    def set_state(self, state: ParticipantState, now: float) -> bool:
        if state == self.state:
            return False
        self.state = state
        self.state_since = now
        return True

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        self.video_hub.close()
        self.audio_hub.close()
