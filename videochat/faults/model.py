"""Fault value objects: what to break, for whom, in which direction, and for how long.

A fault targets a room (or ``"*"``, every room) and optionally one participant by display name;
``None`` means every participant of the room. Direction follows the participant's point of view:
``up`` is what they send (packets the server RECEIVES on their legs), ``down`` is what they get
(packets the server SENDS on their legs).

Every fault except ``kill`` has a duration and reverts by itself. Presets expand into several
faults: network profiles like testRTC's, and scenarios named like LiveKit's ``simulateScenario``.
Commands arriving from Redis, the command line or the page are parsed with `parse_fault`, which
raises `InvalidFaultCommand` naming the bad field and value.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError

from videochat.exceptions import InvalidFaultCommand
from videochat.faults.kinds import (
    BACKEND_KINDS,
    FAULT_KINDS,
    JITTER_MS_RANGE,
    KBPS_RANGE,
    LATENCY_MS_RANGE,
    MAX_DURATION_S,
    NETWORK_KINDS,
    OUTAGE_MAX_S,
    PERCENT_RANGE,
    Direction,
)

VideoEffect = Literal["freeze", "black"]

ALL_ROOMS = "*"
DEFAULT_DURATION_S = 30.0

_NAME_OK = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


def new_fault_id() -> str:
    return uuid.uuid4().hex[:12]


class _FaultBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_fault_id, pattern=r"^[A-Za-z0-9_-]{1,40}$")
    room: str = Field(description="room name, or '*' for every room")
    participant: str | None = Field(default=None, description="display name; None: whole room")
    duration_s: float = Field(default=DEFAULT_DURATION_S, gt=0, le=MAX_DURATION_S)
    preset: str | None = None

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        value = value.strip()
        if not _NAME_OK.match(value):
            raise ValueError("room must be 1-64 printable characters")
        return value

    @field_validator("participant")
    @classmethod
    def _participant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        if not _NAME_OK.match(value):
            raise ValueError("participant must be 1-64 printable characters")
        return value

    @property
    def target(self) -> str:
        room = "every room" if self.room == ALL_ROOMS else f"room {self.room}"
        return f"{self.participant} in {room}" if self.participant else room

    def matches(self, room: str, participant: str | None) -> bool:
        """Whether a leg of `participant` in `room` is covered by this fault."""
        if self.room != ALL_ROOMS and self.room != room:
            return False
        return self.participant is None or self.participant == participant

    def params(self) -> dict[str, Any]:
        """The kind-specific parameters, for events, audit records and tables."""
        common = {"id", "kind", "room", "participant", "duration_s", "preset"}
        return {k: v for k, v in self.model_dump().items() if k not in common}

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{getattr(self, 'kind', '?')}({extra}) on {self.target}"


class _Directed(_FaultBase):
    direction: Direction = "both"


class LossFault(_Directed):
    kind: Literal["loss"] = "loss"
    percent: float = Field(gt=PERCENT_RANGE[0], le=PERCENT_RANGE[1],
                           description="share of packets dropped")


class LatencyFault(_Directed):
    kind: Literal["latency"] = "latency"
    ms: float = Field(ge=LATENCY_MS_RANGE[0], le=LATENCY_MS_RANGE[1],
                      description="added one-way delay")
    jitter_ms: float = Field(default=0.0, ge=JITTER_MS_RANGE[0], le=JITTER_MS_RANGE[1],
                             description="uniform +/- spread")


class BandwidthFault(_Directed):
    kind: Literal["bandwidth"] = "bandwidth"
    kbps: float = Field(ge=KBPS_RANGE[0], le=KBPS_RANGE[1],
                        description="cap on bits per second / 1000")


class BlackoutFault(_Directed):
    kind: Literal["blackout"] = "blackout"


class KillFault(_FaultBase):
    kind: Literal["kill"] = "kill"
    # A kill happens at once; the duration only keeps it visible in lists for a moment.
    duration_s: float = Field(default=1.0, gt=0, le=MAX_DURATION_S)


class FreezeVideoFault(_FaultBase):
    kind: Literal["freeze_video"] = "freeze_video"


class BlackVideoFault(_FaultBase):
    kind: Literal["black_video"] = "black_video"


class RedisOutageFault(_FaultBase):
    kind: Literal["redis_outage"] = "redis_outage"
    room: str = ALL_ROOMS
    duration_s: float = Field(default=10.0, gt=0, le=OUTAGE_MAX_S)


class MongoOutageFault(_FaultBase):
    kind: Literal["mongo_outage"] = "mongo_outage"
    room: str = ALL_ROOMS
    duration_s: float = Field(default=10.0, gt=0, le=OUTAGE_MAX_S)


NetworkFault = LossFault | LatencyFault | BandwidthFault | BlackoutFault
Fault = Annotated[
    LossFault | LatencyFault | BandwidthFault | BlackoutFault | KillFault | FreezeVideoFault
    | BlackVideoFault | RedisOutageFault | MongoOutageFault,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Fault] = TypeAdapter(Fault)


def _explain(exc: PydanticValidationError, data: Any) -> InvalidFaultCommand:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in FAULT_KINDS:
        loc = loc[1:]  # pydantic prefixes the discriminator's tag
    field = ".".join(loc) or "kind"
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kind = data.get("kind") if isinstance(data, dict) else None
        return InvalidFaultCommand(
            "fault kind", kind, f"must be one of {', '.join(FAULT_KINDS)}"
        )
    value = err.get("input")
    if err["type"] == "missing":
        kind = data.get("kind") if isinstance(data, dict) else "?"
        return InvalidFaultCommand("fault field", field, f"is required for kind {kind}")
    if err["type"] == "extra_forbidden":
        kind = data.get("kind") if isinstance(data, dict) else "?"
        return InvalidFaultCommand("fault field", field, f"is not a parameter of {kind}")
    return InvalidFaultCommand(f"fault {field}", value, err["msg"])


def parse_fault(data: Any) -> Fault:
    """A validated fault from a plain dict (e.g. decoded JSON); `InvalidFaultCommand` otherwise."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise InvalidFaultCommand("fault", data, "must be an object with a 'kind'")
    try:
        return _ADAPTER.validate_python(data)
    except PydanticValidationError as exc:
        raise _explain(exc, data) from None


def fault_to_dict(fault: Fault) -> dict[str, Any]:
    return fault.model_dump(mode="json")


# --- presets ------------------------------------------------------------------------------

class Preset(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    faults: tuple[dict[str, Any], ...]
    whole_room: bool = False  # scenarios that hit everyone regardless of the chosen participant


def _net(kbps: float, ms: float, loss: float, jitter: float = 0.0) -> tuple[dict[str, Any], ...]:
    return (
        {"kind": "bandwidth", "kbps": kbps},
        {"kind": "latency", "ms": ms, "jitter_ms": jitter},
        {"kind": "loss", "percent": loss},
    )


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(name="poor-3g", description="Poor 3G: 400 kbps, 350 ms, 5 % loss",
           faults=_net(400, 350, 5)),
    Preset(name="very-bad-network", description="Very bad network: 1 Mbps, 500 ms, 10 % loss",
           faults=_net(1000, 500, 10)),
    Preset(name="call-drop", description="Call drop: 50 kbps, 500 ms, 20 % loss",
           faults=_net(50, 500, 20)),
    Preset(name="good-3g", description="Good 3G: 1.5 Mbps, 150 ms, 1 % loss",
           faults=_net(1500, 150, 1)),
    Preset(name="unstable-wifi", description="Unstable Wi-Fi: 2 Mbps, 60 ms +/- 40 ms, 3 % loss",
           faults=_net(2000, 60, 3, jitter=40)),
    Preset(name="high-latency", description="Satellite-like: 700 ms +/- 50 ms one way",
           faults=({"kind": "latency", "ms": 700, "jitter_ms": 50},)),
    # Scenarios named like LiveKit's simulateScenario, mapped onto what this app has.
    Preset(name="signal-reconnect",
           description="The signalling/state store (Redis) drops for 5 s while media flows on",
           faults=({"kind": "redis_outage", "duration_s": 5.0},)),
    Preset(name="full-reconnect",
           description="The server closes the participant's peer connections: a full rebuild",
           faults=({"kind": "kill"},)),
    Preset(name="subscriber-bandwidth",
           description="What the participant receives is capped at 100 kbps",
           faults=({"kind": "bandwidth", "kbps": 100, "direction": "down"},)),
    Preset(name="node-failure",
           description="Every peer connection of the room is closed at once, as if the media "
                       "node died",
           faults=({"kind": "kill"},), whole_room=True),
)}


def expand_preset(
    name: str, room: str, participant: str | None, duration_s: float | None = None,
    direction: Direction | None = None,
) -> list[Fault]:
    """The faults a preset stands for, aimed at one target."""
    preset = PRESETS.get(name)
    if preset is None:
        raise InvalidFaultCommand("preset", name, f"must be one of {', '.join(PRESETS)}")
    out: list[Fault] = []
    for spec in preset.faults:
        data = dict(spec)
        data.update(room=room, participant=None if preset.whole_room else participant,
                    preset=name)
        if data["kind"] in BACKEND_KINDS:
            data["room"] = ALL_ROOMS
            data.pop("participant")
        if duration_s is not None and data["kind"] != "kill":
            data["duration_s"] = duration_s
        if direction is not None and "direction" not in spec and data["kind"] in NETWORK_KINDS:
            data["direction"] = direction
        out.append(parse_fault(data))
    return out


def describe_all(faults: Iterable[Fault]) -> str:
    return "; ".join(f.describe() for f in faults)
