"""What a run measured, from what the app recorded: pure steps, unit-tested without a browser.

Definitions (the `videochat/qa/runner.py` docstring says how each is collected):

* video resumed: per fault, per browser page, the longest gap of >= `GAP_S` in remote-frame
  progress that begins during the fault (or up to `STOP_LOOKAHEAD_S` after it) and the time
  of the `RESUME_FRAMES`-th new frame after that gap; measured from the fault's end.
* metrics lost: per video leg, seconds missing between its first and last stored sample.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from videochat.call.quality import LADDER
from videochat.events import CallEvent
from videochat.faults.kinds import BACKEND_KINDS
from videochat.metrics.experience import freezes as leg_freezes
from videochat.metrics.experience import idle_legs
from videochat.metrics.stats import MetricSample
from videochat.qa.assertions import (
    FaultWindow,
    Sample,
    TimelineEvent,
    fault_episodes,
)

logger = logging.getLogger(__name__)

GAP_S = 0.5
STOP_LOOKAHEAD_S = 5.0
RESUME_FRAMES = 3

TIMELINE_KINDS = frozenset({
    "participant_joined", "participant_left", "reconnect_started", "reconnect_succeeded",
    "reconnect_failed", "fault_started", "fault_ended", "quality_changed", "backend_down",
    "backend_up",
})



def event_from_doc(doc: dict[str, Any]) -> CallEvent:
    return CallEvent.from_doc(doc)


def _secs(at: datetime, t0: datetime) -> float:
    return (at - t0).total_seconds()


def reconnect_times_after_faults(
    events: Iterable[CallEvent], windows: Sequence[FaultWindow], t0: datetime,
) -> tuple[dict[str, list[float | None]], list[str]]:
    """Per participant, each reconnect counted from max(drop, end of the fault in force at the
    drop); None for one that failed or never ended. Also one note per episode with its raw
    drop → success duration."""
    out: dict[str, list[float | None]] = defaultdict(list)
    notes: list[str] = []
    open_: dict[tuple[str, str | None], tuple[int, float]] = {}
    for e in sorted(events, key=lambda e: e.at):
        who = e.participant or "?"
        key = (who, e.leg)
        t = _secs(e.at, t0)
        if e.kind == "reconnect_started":
            out[who].append(None)
            open_[key] = (len(out[who]) - 1, t)
        elif e.kind in ("reconnect_succeeded", "reconnect_failed"):
            idx, dropped = open_.pop(key, (None, None))
            if idx is None:
                raw = e.data.get("duration_s")
                dropped = t - float(raw) if isinstance(raw, int | float) else t
                out[who].append(None)
                idx = len(out[who]) - 1
            assert dropped is not None
            if e.kind == "reconnect_failed":
                notes.append(f"reconnect of {who} failed at t={t:.2f} s")
                continue
            ready = dropped
            for w in windows:
                if w.start_s - 0.5 <= dropped <= w.end_s and w.target in (who, "room"):
                    ready = max(ready, w.end_s)
            out[who][idx] = round(max(0.0, t - ready), 3)
            notes.append(f"reconnect of {who}: dropped t={dropped:.2f} s, media back "
                         f"t={t:.2f} s (drop to success {t - dropped:.2f} s, "
                         f"after the path returned {out[who][idx]:.2f} s)")
    return dict(out), notes


def video_resumed_from_progress(
    progress: dict[str, list[float]], windows: Sequence[FaultWindow], t0_wall: float, *,
    gap_s: float = GAP_S, lookahead_s: float = STOP_LOOKAHEAD_S,
    frames: int = RESUME_FRAMES,
) -> dict[str, float | None]:
    """Per fault episode: its end → every page whose remote video stopped is moving again.
    `progress` holds, per page, the wall-clock times of new remote frames."""
    out: dict[str, float | None] = {}
    for ep in fault_episodes(windows):
        start, end = t0_wall + ep.start_s, t0_wall + ep.end_s
        worst: float | None = 0.0
        for times in progress.values():
            ts = sorted(times)
            # The fault's own stop is the longest gap that begins during it (a loaded machine
            # also shows short hiccups, before and after).
            gaps = [i for i in range(1, len(ts)) if ts[i] - ts[i - 1] >= gap_s
                    and start - gap_s <= ts[i - 1] <= end + lookahead_s]
            gap_at = max(gaps, key=lambda i: ts[i] - ts[i - 1]) if gaps else None
            if gap_at is None:
                if ts and ts[-1] < end:  # stopped during the fault and never moved again
                    worst = None
                    break
                continue
            after = ts[gap_at:]
            if len(after) < frames:
                worst = None
                break
            resumed = after[frames - 1]
            worst = max(worst or 0.0, resumed - end, 0.0)
        out[ep.label] = None if worst is None else round(worst, 3)
    return out


def series_from_samples(
    samples: Iterable[MetricSample], t0: datetime,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(fps, rtt_ms, quality_level) of video legs; series named "participant direction leg"."""
    rank = {q.name: len(LADDER) - 1 - i for i, q in enumerate(LADDER)}
    fps: list[Sample] = []
    rtt: list[Sample] = []
    quality: list[Sample] = []
    # The server's legs only: what pages reported is `browser_measurements`' (the existing
    # objectives keep their meaning).
    samples = [s for s in samples if s.source == "server"]
    # A warm spare receive leg is bound to nobody and carries no video by design: a leg that
    # never showed a frame in the whole run is not one whose frame rate the objectives judge.
    carried = {s.leg for s in samples if s.kind == "video" and (s.fps or 0) > 0}
    for s in samples:
        if s.kind != "video":
            continue
        t = round(_secs(s.at, t0), 3)
        name = f"{s.participant} {s.direction} {s.leg}"
        if s.fps is not None and s.leg in carried:
            fps.append(Sample(t, name, float(s.fps)))
        if s.rtt_ms is not None and s.direction == "subscribe":
            rtt.append(Sample(t, name, float(s.rtt_ms)))
        if s.quality in rank:
            quality.append(Sample(t, name, float(rank[s.quality or ""])))
    return fps, rtt, quality


def missing_samples(samples: Iterable[MetricSample], windows: Sequence[FaultWindow] = (),
                    t0: datetime | None = None, settle_s: float = 3.0) -> int:
    """Seconds without a stored sample between each video leg's first and last one, except
    during media faults (+ `settle_s`): a leg that a blackout took down takes no samples, which
    is not a loss of metrics. Backend outages are not excused: that is what they test."""
    excused: list[tuple[float, float]] = []
    if t0 is not None:
        base = t0.timestamp()
        excused = [(base + w.start_s - 1, base + w.end_s + settle_s) for w in windows
                   if not set(w.kind.split("+")) & BACKEND_KINDS]
    seconds: dict[str, set[int]] = defaultdict(set)
    for s in samples:
        # Browser reports are optional data, shed when the server is busy: not counted.
        if s.kind == "video" and s.source == "server":
            seconds[s.leg].add(int(s.at.timestamp()))
    lost = 0
    for secs in seconds.values():
        for sec in range(min(secs), max(secs) + 1):
            if sec not in secs and not any(a <= sec <= b for a, b in excused):
                lost += 1
    return lost


def browser_measurements(
    samples: Iterable[MetricSample], t0: datetime,
) -> tuple[list[Sample], dict[str, tuple[int, float, float | None]]]:
    """From what the pages reported (`<leg>@browser` samples): received fps per receiving leg
    (series "participant received leg"), and per participant (freezes, seconds frozen,
    longest freeze) over the run. The warm spare (a receiving leg that never showed a frame
    while another did) is left out. Counters already running at t0 count from their value
    then (`metrics.experience.freezes`)."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        if s.source != "browser" or s.direction != "subscribe":
            continue
        rows[(s.participant, s.leg)].append({
            "t": s.at, "participant": s.participant, "leg": s.leg, "direction": s.direction,
            "fps": s.fps, "fc": s.freeze_count, "fz": s.freeze_s})
    idle = idle_legs(r for rs in rows.values() for r in rs)
    fps: list[Sample] = []
    freezes: dict[str, tuple[int, float, float | None]] = {}
    for (who, leg), rs in sorted(rows.items()):
        if (who, leg) in idle:
            continue
        rs.sort(key=lambda r: r["t"])
        fps += [Sample(round(_secs(r["t"], t0), 3), f"{who} received {leg}", float(r["fps"]))
                for r in rs if r["fps"] is not None]
        count, frozen, longest = leg_freezes(rs, t0)
        if any(r["fc"] is not None for r in rs):
            c0, f0, l0 = freezes.get(who, (0, 0.0, None))
            worst = longest if l0 is None else (l0 if longest is None else max(l0, longest))
            freezes[who] = (c0 + count, round(f0 + frozen, 3), worst)
    return fps, freezes


def fps_from_counts(counts: dict[str, dict[float, int]], t0_wall: float, duration_s: float,
                    series: str, tiles: int = 1) -> list[Sample]:
    """Frames per second a page showed, per whole second of the run (sample at the second's
    end), averaged over its `tiles` remote videos. `counts` holds, per iframe, its remote
    videos' decoded-frame total by wall-clock time (ms); a total that goes down is a new
    `<video>` counting from 0."""
    per_second = [0] * int(duration_s)
    for by_time in counts.values():
        points = sorted(by_time.items())
        for (_ta, na), (tb, nb) in zip(points, points[1:], strict=False):
            rel = tb / 1000.0 - t0_wall
            k = math.ceil(rel) - 1  # a delta ending at tb covers (ta, tb]: second (k, k + 1]
            if 0 <= k < len(per_second):
                per_second[k] += nb - na if nb >= na else nb
    return [Sample(float(k + 1), series, n / tiles) for k, n in enumerate(per_second)]


def bot_fps_series(per_second: dict[int, int], t0_wall: float, duration_s: float,
                   series: str) -> list[Sample]:
    """A bot's frames per wall-clock second, for the whole seconds inside the run."""
    first, last = int(t0_wall) + 1, int(t0_wall + duration_s)
    return [Sample(round(sec + 1 - t0_wall, 3), series, float(per_second.get(sec, 0)))
            for sec in range(first, last)]


def timeline_events(events: Iterable[CallEvent], t0: datetime) -> list[TimelineEvent]:
    out = []
    for e in events:
        if e.kind not in TIMELINE_KINDS:
            continue
        detail = ""
        if e.kind == "quality_changed":
            detail = f"{e.data.get('from_level')} → {e.data.get('to_level')}"
        elif e.kind.startswith("fault_"):
            detail = str(e.data.get("fault_kind", ""))
        elif "duration_s" in e.data:
            detail = f"{e.data['duration_s']} s"
        out.append(TimelineEvent(round(_secs(e.at, t0), 3), e.kind, e.participant, detail))
    return out


def expected_events_seen(events: Sequence[CallEvent], injected: int) -> bool:
    """True when the flusher has written what the run needs: a start per injected fault and an
    outcome for every reconnect that started."""
    started = sum(1 for e in events if e.kind == "fault_started")
    opened: dict[tuple[str | None, str | None], int] = defaultdict(int)
    for e in events:
        key = (e.participant, e.leg)
        if e.kind == "reconnect_started":
            opened[key] += 1
        elif e.kind in ("reconnect_succeeded", "reconnect_failed"):
            opened[key] -= 1
    return started >= injected and all(v <= 0 for v in opened.values())


def video_back_after_restarts(
    progress: dict[str, list[float]], restarts: Sequence[tuple[str, float]], *,
    frames: int = RESUME_FRAMES,
) -> dict[str, float | None]:
    """Per app restart (label, wall time the new process answered its health check): how long
    until every page's remote video moved again, at its `frames`-th new frame after that
    instant. The old process had exited by then, so every such frame is new media."""
    out: dict[str, float | None] = {}
    for label, healthy_at in restarts:
        worst: float | None = 0.0
        for times in progress.values():
            after = sorted(t for t in times if t > healthy_at)
            if len(after) < frames:
                worst = None
                break
            worst = max(worst or 0.0, after[frames - 1] - healthy_at)
        out[label] = None if worst is None or not progress else round(worst, 3)
    return out
