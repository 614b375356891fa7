"""Verdicts: a scenario's recovery objectives checked against what a run measured.

Every objective the scenario states yields one `AssertionResult`. A measurement that is missing
(None: the runner could not take it) or empty where the fault should have produced one fails with
the reason spelled out: an objective is never passed by default.

Times are seconds from the run's start (t = 0 when every participant's media flows). Frame rate
and RTT objectives describe the call outside faults: samples during a fault and for `settle_s`
after it, and during the first `warmup_s`, are left out, and the detail says so. Per leg, the
10th percentile of fps must reach min_fps and the 95th percentile of RTT stay under max_rtt_ms;
the worst leg decides.

Three objectives judge the call *during* faults, as the participants saw it:
- ``min_fps_during_faults``: per receiving leg, the 10th percentile of its received frame
  rate over the samples inside fault windows (start to end, no settling); the worst leg
  decides. Received fps is what each page reported decoding (getStats, `metrics/browser.py`),
  or for a page without browser stats its remote-video progress probe, and for a bot the
  frames it received through the relay.
- ``max_freeze_s``: the longest freeze any page reported over the run (Chromium's
  `freezeCount`/`totalFreezesDuration`, `metrics/experience.py`); no page reporting fails it.
- ``max_reconnects``: reconnect episodes per participant over the run (`reconnect_started`
  events); the participant with most decides; 0 when none happened.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from videochat.events import CallEvent
from videochat.qa.scenario import Assertions

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
    """For the charts only: the quality ladder's rung per leg, higher is better
    (`len(LADDER) - 1 - level.rank` for `videochat.call.quality.LADDER`)."""
    events: list[TimelineEvent] = field(default_factory=list)
    """For the charts only."""
    video_back_s: dict[str, float | None] | None = None
    """Per app restart: the new process healthy → every browser's remote video moving again;
    None when some browser never saw moving video again."""
    received_fps: list[Sample] | None = None
    """Per receiving leg, what was received: page-reported (getStats) fps, the page's
    progress probe where a page sent no stats, and the bots' received frames."""
    freezes: dict[str, tuple[int, float, float | None]] | None = None
    """Per participant whose page reported: (freezes, seconds frozen, longest freeze)."""


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
    if len(values) == 1:
        return _at_most(name, round(worst, 3), threshold, "s", worst_who)
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
        elif name == "video_back_within_s":
            back = m.video_back_s
            out.append(_durations(
                name, threshold, None if back is None else list(back.items()),
                "not measured: frame delivery was not watched across the restarts",
                "no app restart was performed", "video never came back after"))
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
        elif name == "min_fps_during_faults":
            out.append(_during_faults(name, threshold, m))
        elif name == "max_freeze_s":
            out.append(_longest_freeze(name, threshold, m.freezes))
        elif name == "max_reconnects":
            out.append(_reconnects(name, threshold, m.reconnect_times_s))
        else:  # a new field in Assertions without a rule here is our bug; say so in the verdict
            out.append(_fail(name, threshold, "", "no rule evaluates this objective"))
    return out


def _during_faults(name: str, threshold: float, m: RunMeasurements) -> AssertionResult:
    if m.received_fps is None:
        return _fail(name, threshold, "fps", "not measured: no received frame rates")
    if not m.fault_windows:
        return _fail(name, threshold, "fps", "no fault window in this run")
    per_leg: dict[str, list[float]] = defaultdict(list)
    for s in m.received_fps:
        if math.isfinite(s.value) and any(w.start_s <= s.t_s <= w.end_s
                                          for w in m.fault_windows):
            per_leg[s.series].append(s.value)
    if not per_leg:
        return _fail(name, threshold, "fps", f"no received-fps sample inside the fault windows "
                                             f"({len(m.received_fps)} samples in all)")
    stats = {k: _percentile(v, FPS_PERCENTILE) for k, v in per_leg.items()}
    who = min(stats, key=lambda k: stats[k])
    value = round(stats[who], 2)
    ok = value >= threshold - 1e-9
    windows = ", ".join(f"{w.label} {w.start_s:.1f}-{w.end_s:.1f} s" for w in m.fault_windows)
    detail = (f"p{FPS_PERCENTILE} received fps per leg inside the faults ({windows}); lowest: "
              f"{who} ({len(per_leg[who])} samples); legs: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(stats.items())))
    text = f"{value:g} fps {'meets' if ok else 'below'} {threshold:g} fps; {detail}"
    return AssertionResult(name, value, threshold, ok, text, "fps")


def _longest_freeze(name: str, threshold: float,
                    freezes: dict[str, tuple[int, float, float | None]] | None,
                    ) -> AssertionResult:
    if not freezes:
        return _fail(name, threshold, "s", "not measured: no page reported its freezes "
                                           "(browser stats missing, or only bots)")
    longest = {who: (lg or 0.0) for who, (_, _, lg) in freezes.items()}
    who = max(longest, key=lambda k: longest[k])
    shown = ", ".join(f"{w} {c} freezes, {f:.2f} s frozen, longest {longest[w]:.3f} s"
                      for w, (c, f, _) in sorted(freezes.items()))
    return _at_most(name, round(longest[who], 3), threshold, "s",
                    f"longest browser-reported freeze: {who}; {shown}")


def _reconnects(name: str, threshold: float,
                reconnects: dict[str, list[float | None]] | None) -> AssertionResult:
    if reconnects is None:
        return _fail(name, threshold, "", "not measured: no reconnect events were collected")
    counts = {who: len(v) for who, v in reconnects.items()}
    if not counts:
        return _at_most(name, 0, threshold, "", "no participant reconnected")
    who = max(counts, key=lambda k: counts[k])
    shown = ", ".join(f"{w} {n}" for w, n in sorted(counts.items()))
    return _at_most(name, counts[who], threshold, "", f"most: {who}; per participant: {shown}")


def _by_fault(values: list[float | None], m: RunMeasurements) -> list[tuple[str, float | None]]:
    labels = [w.label for w in m.fault_windows]
    return [(labels[i] if i < len(labels) else f"fault {i}", v) for i, v in enumerate(values)]


def all_passed(results: Sequence[AssertionResult]) -> bool:
    """True only when there is at least one result and every one passed."""
    return bool(results) and all(r.passed for r in results)


# ---------------------------------------------------------------------------------------------
# deriving measurements from what the call recorded (pure: the runner reads, these compute)

NETWORK_FAULT_KINDS = frozenset({"loss", "latency", "bandwidth"})
RESUMED_FPS = 5.0
"""A leg's video counts as moving again at its first fps sample at or above this after a fault."""
STOP_LOOKAHEAD_S = 5.0


def _t(at: datetime, t0: datetime) -> float:
    return (at - t0).total_seconds()


def fault_windows_from_events(events: Iterable[CallEvent], t0: datetime) -> list[FaultWindow]:
    """`fault_started` / `fault_ended` paired by fault id (several media processes may report
    the same fault: the earliest start and the latest end win). A fault still running at the
    end of the events ends where it started plus its planned `until`, when known, else at start.
    """
    starts: dict[str, CallEvent] = {}
    ends: dict[str, CallEvent] = {}
    for e in events:
        fid = e.data.get("fault_id")
        if not isinstance(fid, str):
            continue
        if e.kind == "fault_started" and (fid not in starts or e.at < starts[fid].at):
            starts[fid] = e
        elif e.kind == "fault_ended" and (fid not in ends or e.at > ends[fid].at):
            ends[fid] = e
    out = []
    for fid, s in starts.items():
        start = _t(s.at, t0)
        end_ev = ends.get(fid)
        end = _t(end_ev.at, t0) if end_ev is not None else start
        kind = str(s.data.get("fault_kind", "fault"))
        out.append(FaultWindow(kind, s.participant or "room", start, max(start, end)))
    return sorted(out, key=lambda w: (w.start_s, w.kind))


def fault_episodes(windows: Sequence[FaultWindow]) -> list[FaultWindow]:
    """Faults applied together (a network profile is loss + latency + bandwidth at once) merged
    into one episode, so each is measured once: overlapping windows on the same target."""
    episodes: list[FaultWindow] = []
    for w in sorted(windows, key=lambda w: (w.target, w.start_s)):
        last = episodes[-1] if episodes else None
        if last is not None and last.target == w.target and w.start_s <= last.end_s:
            kinds = last.kind if w.kind in last.kind.split("+") else f"{last.kind}+{w.kind}"
            episodes[-1] = FaultWindow(kinds, w.target, last.start_s, max(last.end_s, w.end_s))
        else:
            episodes.append(w)
    return sorted(episodes, key=lambda w: w.start_s)


def reconnect_times_from_events(events: Iterable[CallEvent]) -> dict[str, list[float | None]]:
    """Per participant, each reconnect episode's duration (`reconnect_succeeded.duration_s`);
    None for one that failed or had not ended when the events stop."""
    out: dict[str, list[float | None]] = defaultdict(list)
    open_: dict[tuple[str, str | None], int] = {}
    for e in sorted(events, key=lambda e: e.at):
        who = e.participant or "?"
        key = (who, e.leg)
        if e.kind == "reconnect_started":
            out[who].append(None)
            open_[key] = len(out[who]) - 1
        elif e.kind in ("reconnect_succeeded", "reconnect_failed"):
            idx = open_.pop(key, None)
            value = e.data.get("duration_s") if e.kind == "reconnect_succeeded" else None
            duration = float(value) if isinstance(value, int | float) else None
            if idx is None:  # the start was not recorded; the outcome still counts
                out[who].append(duration)
            else:
                out[who][idx] = duration
    return dict(out)


def quality_times_from_events(
    events: Iterable[CallEvent], t0: datetime, windows: Sequence[FaultWindow],
    levels_best_first: Sequence[str], *, run_end_s: float | None = None,
) -> tuple[list[float | None], list[float | None]]:
    """Per network-fault episode: (fault start → first down-step on any leg) and (fault end →
    every leg that stepped down is back at its level from before the fault).

    A leg is `CallEvent.leg` (or its participant). An episode where no leg stepped down has no
    step-down time (None) and a return time of 0: it never left full quality.
    """
    rank = {name: i for i, name in enumerate(levels_best_first)}
    changes: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.at):
        if e.kind != "quality_changed":
            continue
        src, dst = e.data.get("from_level"), e.data.get("to_level")
        if src not in rank or dst not in rank:
            continue
        changes[e.leg or e.participant or "?"].append((_t(e.at, t0), rank[src], rank[dst]))
    downs: list[float | None] = []
    backs: list[float | None] = []
    for ep in fault_episodes([w for w in windows if set(w.kind.split("+")) & NETWORK_FAULT_KINDS]):
        first_down: float | None = None
        worst_back: float | None = 0.0
        for leg_changes in changes.values():
            before = [c for c in leg_changes if c[0] < ep.start_s]
            during = [c for c in leg_changes if ep.start_s <= c[0] <= ep.end_s]
            stepped = [c for c in during if c[2] > c[1]]
            if not stepped:
                continue
            at_down = stepped[0][0] - ep.start_s
            first_down = at_down if first_down is None else min(first_down, at_down)
            full = before[-1][2] if before else during[0][1]
            level = during[-1][2]
            back_at = ep.end_s if level <= full else None
            for t, _src, dst in (c for c in leg_changes if c[0] > ep.end_s):
                if back_at is not None:
                    break
                if dst <= full and (run_end_s is None or t <= run_end_s):
                    back_at = t
            if back_at is None:
                worst_back = None
            elif worst_back is not None:
                worst_back = max(worst_back, back_at - ep.end_s)
        downs.append(None if first_down is None else round(first_down, 3))
        backs.append(None if worst_back is None else round(worst_back, 3))
    return downs, backs


def video_resumed_from_samples(
    fps: Sequence[Sample], windows: Sequence[FaultWindow], *, resumed_fps: float = RESUMED_FPS,
    stop_lookahead_s: float = STOP_LOOKAHEAD_S,
) -> dict[str, float | None]:
    """Per fault episode: its end → the moment every leg whose video stopped moves again (its
    first fps sample ≥ `resumed_fps` after a lower one); 0 when no leg stopped; None when a leg
    that stopped never moved again.

    A leg counts as stopped by a fault when it fell below `resumed_fps` between the fault's
    start and `stop_lookahead_s` after its end (a killed connection shows only in the next
    samples); a leg already stopped before the fault is not counted. The resolution is the
    sampling period (1 s at 1 Hz); a sample's time is the end of the interval it covers."""
    legs: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(fps, key=lambda s: s.t_s):
        legs[s.series].append(s)
    out: dict[str, float | None] = {}
    for ep in fault_episodes(windows):
        worst: float | None = 0.0
        for samples in legs.values():
            before = [s for s in samples if s.t_s < ep.start_s]
            if before and before[-1].value < resumed_fps:
                continue  # already stopped before this fault: not this fault's doing
            stop = next((i for i, s in enumerate(samples)
                         if ep.start_s <= s.t_s <= ep.end_s + stop_lookahead_s
                         and s.value < resumed_fps), None)
            if stop is None:
                continue
            back = next((s.t_s for s in samples[stop:] if s.value >= resumed_fps), None)
            if back is None:
                worst = None
                break
            worst = max(worst or 0.0, back - ep.end_s, 0.0)
        out[ep.label] = None if worst is None else round(worst, 3)
    return out


def chat_ledger(
    sent: Mapping[str, str], delivered: Mapping[str, Iterable[str]], persisted: Iterable[str],
) -> ChatLedger:
    """From message ids: what was sent (id → sender), what each participant received (arrival
    order, copies included) and what MongoDB holds (copies included). A message counts as
    delivered when every participant but its sender received it."""
    sent_ids = set(sent)
    received = {who: list(ids) for who, ids in delivered.items()}
    stored = list(persisted)
    seen = {who: set(ids) for who, ids in received.items()}
    everywhere = {
        mid for mid in sent_ids
        if all(mid in ids for who, ids in seen.items() if who != sent[mid])
    }
    duplicates = sum(len(ids) - len(set(ids)) for ids in received.values())
    duplicates += len(stored) - len(set(stored))
    return ChatLedger(
        sent=len(sent_ids), delivered=len(everywhere),
        persisted=len(sent_ids & set(stored)), duplicates=duplicates,
    )
