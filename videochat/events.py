"""Call events: what happened to a room, a participant or a media leg, and when.

Event kinds are snake_case past tense. Producers (rooms, faults, recovery, the quality ladder)
hand events to an `EventSink`; `videochat.metrics.store.MetricsStore` is the one that persists them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from videochat.clocks import utcnow

logger = logging.getLogger(__name__)

_KIND = re.compile(r"^[a-z]+(_[a-z]+)*$")

KNOWN_KINDS = frozenset({
    "call_started", "call_ended",
    "participant_joined", "participant_left", "participant_reconnecting",
    "leg_connected", "leg_closed", "connection_state_changed",
    "reconnect_started", "reconnect_attempted", "reconnect_succeeded", "reconnect_failed",
    "quality_changed", "fault_started", "fault_ended", "backend_down", "backend_up",
    "first_frame_received", "media_stalled", "media_switched", "server_restart",
})


@dataclass(frozen=True)
class CallEvent:
    kind: str
    room: str
    participant: str | None = None
    call_id: str | None = None
    leg: str | None = None
    at: datetime = field(default_factory=utcnow)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _KIND.match(self.kind):
            raise ValueError(f"event kind {self.kind!r} must be snake_case")

    def to_doc(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "room": self.room, "participant": self.participant,
            "call_id": self.call_id, "leg": self.leg, "at": self.at, "data": dict(self.data),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CallEvent:
        """The event a `to_doc()` document (as read back from MongoDB) holds; MongoDB returns
        naive datetimes, in UTC."""
        at = doc["at"]
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return cls(kind=doc["kind"], room=doc["room"], participant=doc.get("participant"),
                   call_id=doc.get("call_id"), leg=doc.get("leg"), at=at,
                   data=dict(doc.get("data") or {}))


class EventSink(Protocol):
    def emit(self, event: CallEvent) -> None: ...


class EventBus:
    """Fans events out to sinks in-process; a failing sink never breaks the producer."""

    def __init__(self) -> None:
        self._sinks: list[Callable[[CallEvent], None]] = []
        self._lock = threading.Lock()

    def add_sink(self, sink: Callable[[CallEvent], None]) -> Callable[[], None]:
        with self._lock:
            self._sinks.append(sink)

        def remove() -> None:
            with self._lock:
                if sink in self._sinks:
                    self._sinks.remove(sink)

        return remove

    def emit(self, event: CallEvent) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - one bad sink must not stop the others
                logger.exception("event sink failed for %s", event.kind)
