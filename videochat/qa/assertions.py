"""Verdicts: a scenario's recovery objectives checked against what a run measured.

Every objective the scenario states yields one `AssertionResult`. A measurement that is missing
(None: the runner could not take it) or empty where the fault should have produced one fails with
the reason spelled out: an objective is never passed by default.

Times are seconds from the run's start (t = 0 when every participant's media flows). Frame rate
and RTT objectives describe the call outside faults: samples during a fault and for `settle_s`
after it, and during the first `warmup_s`, are left out, and the detail says so. Per leg, the
10th percentile of fps must reach min_fps and the 95th percentile of RTT stay under max_rtt_ms;
the worst leg decides.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from videochat.scenario import Assertions

logger = logging.getLogger(__name__)

DEFAULT_SETTLE_S = 10.0
DEFAULT_WARMUP_S = 2.0
RTT_PERCENTILE = 95
FPS_PERCENTILE = 10
"""min_fps holds when 90 % of a leg's clean samples reach it: one late sample does not fail a run,
a sustained drop does."""


@dataclass(frozen=True)
class Sample:
    """One reading of a time series: `series` names the leg, e.g. "bot1→alice"."""

    t_s: float
    series: str
    value: float


@dataclass(frozen=True)
class TimelineEvent:
    """Something that happened during a run, for the report's timeline (reconnect_started...)."""

    t_s: float
    kind: str
    participant: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class FaultWindow:
    """When a fault was actually in force during the run (not when it was planned)."""

    kind: str
    target: str
    start_s: float
    end_s: float

    @property
    def label(self) -> str:
        return f"{self.kind} on {self.target}"


@dataclass(frozen=True)
class ChatLedger:
    """Chat accounting over a run; counts are of distinct messages unless named otherwise."""

    sent: int
    delivered: int
    """Messages that reached every other participant."""
    persisted: int
    """Messages found in MongoDB after the run."""
    duplicates: int
    """Extra copies any receiver got, plus extra copies stored."""

    @property
    def lost(self) -> int:
        return max(0, self.sent - min(self.delivered, self.persisted))


@dataclass
class RunMeasurements:
    """What a run measured. None means "not measured"; an empty collection means "none seen"."""

    fault_windows: list[FaultWindow] = field(default_factory=list)
    reconnect_times_s: dict[str, list[float | None]] | None = None
    """Per participant, each reconnect's duration; None for one that never completed."""
    quality_step_down_s: list[float | None] | None = None
    """Per fault, fault start → first lower quality level; None when it never stepped down."""
    back_to_full_quality_s: list[float | None] | None = None
    """Per fault, fault end → top quality level again; None when it never got back."""
    chat: ChatLedger | None = None
    fps: list[Sample] | None = None
    rtt_ms: list[Sample] | None = None
    video_resumed_s: dict[str, float | None] | None = None
    """Per fault label, fault end → moving video on every leg; None when it never resumed."""
    metrics_lost: int | None = None
    """Metric samples taken but absent from MongoDB after the run."""
    quality_level: list[Sample] | None = None
    """For the charts only: the quality ladder's rung per leg (higher is better)."""
    events: list[TimelineEvent] = field(default_factory=list)
    """For the charts only."""


@dataclass(frozen=True)
class AssertionResult:
    name: str
    measured: float | None
    threshold: float
    passed: bool
    detail: str
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------


def _fail(name: str, threshold: float, unit: str, why: str) -> AssertionResult:
    return AssertionResult(name, None, threshold, False, why, unit)


def _at_most(
    name: str, measured: float, threshold: float, unit: str, detail: str
) -> AssertionResult:
    ok = measured <= threshold + 1e-9
    verdict = "within" if ok else "exceeds"
    text = f"{measured:g} {unit} {verdict} {threshold:g} {unit}; {detail}".strip("; ")
    return AssertionResult(name, measured, threshold, ok, text, unit)


def _durations(
    name: str, threshold: float, values: Sequence[tuple[str, float | None]] | None,
    missing: str, none_seen: str, never: str,
) -> AssertionResult:
    """Worst of several durations; one that never ended fails the objective outright."""
    if values is None:
        return _fail(name, threshold, "s", missing)
    if not values:
        return _fail(name, threshold, "s", none_seen)
    unfinished = [who for who, v in values if v is None]
    if unfinished:
        return _fail(name, threshold, "s", f"{never}: {', '.join(unfinished)}")
    worst_who, worst = max(((w, v) for w, v in values if v is not None), key=lambda p: p[1])
    shown = ", ".join(f"{w} {v:.2f} s" for w, v in values if v is not None)
    return _at_most(name, round(worst, 3), threshold, "s", f"worst: {worst_who} ({shown})")


def _clean(samples: Iterable[Sample], m: RunMeasurements, settle_s: float, warmup_s: float,
           ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if s.t_s < warmup_s or not math.isfinite(s.value):
            continue
        if any(w.start_s <= s.t_s <= w.end_s + settle_s for w in m.fault_windows):
            continue
        out[s.series].append(s.value)
    return dict(out)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _series_check(
    name: str, threshold: float, unit: str, samples: list[Sample] | None, m: RunMeasurements,
    settle_s: float, warmup_s: float, stat: Callable[[list[float]], float], stat_name: str,
    lowest: bool,
) -> AssertionResult:
    if samples is None:
        return _fail(name, threshold, unit, "not measured: the runner collected no samples")
    per_series = _clean(samples, m, settle_s, warmup_s)
    excluded = (f"outside faults (+{settle_s:g} s settling) and the first {warmup_s:g} s"
                if m.fault_windows else f"after the first {warmup_s:g} s")
    if not per_series:
        return _fail(name, threshold, unit,
                     f"no samples {excluded} ({len(samples)} samples in all)")
    stats = {k: stat(v) for k, v in per_series.items()}
    pick = min if lowest else max
    who = pick(stats, key=lambda k: stats[k])
    value = round(stats[who], 2)
    detail = (f"{stat_name} per leg {excluded}; {'lowest' if lowest else 'highest'}: {who} "
              f"({len(per_series[who])} samples); legs: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(stats.items())))
    if lowest:
        ok = value >= threshold - 1e-9
        text = f"{value:g} {unit} {'meets' if ok else 'below'} {threshold:g} {unit}; {detail}"
        return AssertionResult(name, value, threshold, ok, text, unit)
    return _at_most(name, value, threshold, unit, detail)


def _count(name: str, threshold: float, measured: int | None, missing: str, detail: str,
           ) -> AssertionResult:
    if measured is None:
        return _fail(name, threshold, "", missing)
    return _at_most(name, measured, threshold, "", detail)


def evaluate(
    assertions: Assertions, m: RunMeasurements, *, settle_s: float = DEFAULT_SETTLE_S,
    warmup_s: float = DEFAULT_WARMUP_S,
) -> list[AssertionResult]:
    """One result per objective the scenario states, in the order of `Assertions`' fields."""
    out: list[AssertionResult] = []
    for name, threshold in assertions.given().items():
        if name == "reconnect_time_max_s":
            values = None if m.reconnect_times_s is None else [
                (who, v) for who, vs in m.reconnect_times_s.items() for v in vs
            ]
            out.append(_durations(
                name, threshold, values, "not measured: no reconnect events were collected",
                "no reconnect was observed after the fault", "reconnect never completed for"))
        elif name == "quality_step_down_max_s":
            steps = m.quality_step_down_s
            out.append(_durations(
                name, threshold, None if steps is None else _by_fault(steps, m),
                "not measured: no quality_changed events were collected",
                "no fault was measured for a quality step-down",
                "quality never stepped down after"))
        elif name == "back_to_full_quality_max_s":
            ups = m.back_to_full_quality_s
            out.append(_durations(
                name, threshold, None if ups is None else _by_fault(ups, m),
                "not measured: no quality_changed events were collected",
                "no fault was measured for the return to full quality",
                "quality never returned to full after"))
        elif name == "video_resumed_after_fault_max_s":
            resumed = m.video_resumed_s
            out.append(_durations(
                name, threshold, None if resumed is None else list(resumed.items()),
                "not measured: frame delivery was not watched",
                "no fault was measured for video resuming", "video never resumed after"))
        elif name in ("chat_lost_max", "chat_duplicated_max"):
            ledger = m.chat
            lost = name == "chat_lost_max"
            measured = None if ledger is None else (ledger.lost if lost else ledger.duplicates)
            detail = "" if ledger is None else (
                f"sent {ledger.sent}, delivered {ledger.delivered}, persisted {ledger.persisted}, "
                f"duplicates {ledger.duplicates}")
            out.append(_count(name, threshold, measured,
                              "not measured: no chat ledger was collected", detail))
        elif name == "metrics_lost_max":
            out.append(_count(name, threshold, m.metrics_lost,
                              "not measured: metric samples were not reconciled with MongoDB",
                              "metric samples taken but missing from MongoDB"))
        elif name == "min_fps":
            out.append(_series_check(
                name, threshold, "fps", m.fps, m, settle_s, warmup_s,
                lambda v: _percentile(v, FPS_PERCENTILE), f"p{FPS_PERCENTILE} fps", lowest=True))
        elif name == "max_rtt_ms":
            out.append(_series_check(
                name, threshold, "ms", m.rtt_ms, m, settle_s, warmup_s,
                lambda v: _percentile(v, RTT_PERCENTILE), f"p{RTT_PERCENTILE} RTT", lowest=False))
        else:  # a new field in Assertions without a rule here is our bug; say so in the verdict
            out.append(_fail(name, threshold, "", "no rule evaluates this objective"))
    return out


def _by_fault(values: list[float | None], m: RunMeasurements) -> list[tuple[str, float | None]]:
    labels = [w.label for w in m.fault_windows]
    return [(labels[i] if i < len(labels) else f"fault {i}", v) for i, v in enumerate(values)]


def all_passed(results: Sequence[AssertionResult]) -> bool:
    """True only when there is at least one result and every one passed."""
    return bool(results) and all(r.passed for r in results)
