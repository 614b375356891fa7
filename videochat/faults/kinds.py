"""The fault taxonomy: every kind of fault, its family, its page label and its parameters.

The one list the rest derives from: the fault model (`videochat/faults/model.py`), the QA
scenario steps (`videochat/qa/scenario.py`), the command line's flags (`videochat/faults/cli.py`)
and the /faults page (`videochat/ui/faults.py`). tests/faults/test_kinds.py checks that the fault
and step models carry exactly the parameters listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down", "both"]
DIRECTIONS: tuple[Direction, ...] = ("both", "up", "down")
Family = Literal["network", "connection", "video", "backend"]

MAX_DURATION_S = 3600.0
OUTAGE_MAX_S = 600.0  # a backend paused longer than this is an incident, not a test

# Parameter bounds, shared by the fault model and the scenario steps.
PERCENT_RANGE = (0.0, 100.0)  # loss: above the first, at most the second
LATENCY_MS_RANGE = (0.0, 10_000.0)
JITTER_MS_RANGE = (0.0, 5_000.0)
KBPS_RANGE = (8.0, 1_000_000.0)


@dataclass(frozen=True)
class Parameter:
    """A kind-specific field, and how the command line spells it."""

    name: str
    flag: str
    help: str


PARAMETERS = {
    p.name: p for p in (
        Parameter("percent", "--percent", "loss: share of packets dropped (0-100]"),
        Parameter("ms", "--ms", "latency: added one-way delay in ms"),
        Parameter("jitter_ms", "--jitter", "latency: +/- spread in ms"),
        Parameter("kbps", "--kbps", "bandwidth: cap in kbit/s"),
    )
}


@dataclass(frozen=True)
class FaultKind:
    name: str
    family: Family
    label: str  # on the /faults page
    params: tuple[str, ...] = ()

    @property
    def directed(self) -> bool:
        """Network faults act per direction (up: what the participant sends)."""
        return self.family == "network"


KINDS: tuple[FaultKind, ...] = (
    FaultKind("loss", "network", "Packet loss", ("percent",)),
    FaultKind("latency", "network", "Latency + jitter", ("ms", "jitter_ms")),
    FaultKind("bandwidth", "network", "Bandwidth cap", ("kbps",)),
    FaultKind("blackout", "network", "Blackout (ICE drops)"),
    FaultKind("kill", "connection", "Kill connection now"),
    FaultKind("freeze_video", "video", "Freeze video"),
    FaultKind("black_video", "video", "Black video"),
    FaultKind("redis_outage", "backend", "Redis outage"),
    FaultKind("mongo_outage", "backend", "MongoDB outage"),
)
BY_NAME = {k.name: k for k in KINDS}
FAULT_KINDS = tuple(k.name for k in KINDS)
NETWORK_KINDS = frozenset(k.name for k in KINDS if k.family == "network")
VIDEO_KINDS = frozenset(k.name for k in KINDS if k.family == "video")
BACKEND_KINDS = frozenset(k.name for k in KINDS if k.family == "backend")
KIND_LABELS = {k.name: k.label for k in KINDS}
