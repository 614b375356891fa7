"""Quality as people feel it: freezes, jitter-buffer delay, concealed audio and one score.

All of it comes from what each participant's page reported (`metrics/browser.py`, legs
`<leg>@browser`), read back as rows (`diagnostics.query_samples`) or per-second samples
(`diagnostics.iter_samples`). A participant whose page sent nothing in the range has
`browser_data=False` and every browser figure None: shown as "no browser data", never as 0.

Freezes are Chromium's own (inbound-rtp `freezeCount` / `totalFreezesDuration`, counted when a
freeze ends: a frame shown later than max(3 x the mean frame duration, mean + 150 ms)). Both are
counters of one peer connection: a rebuilt leg starts again from 0, so freezes are the sum of
the counters' increases; a leg already running when the range starts counts from its first
value in the range. The longest freeze is the largest increase of `totalFreezesDuration` over
one sample interval, divided by the freezes that ended in it (when several end within one
second, their mean).

**Experience score** (MOS-like, 1 to 4.5), per participant, of what they received. A reduced
ITU-T G.107 E-model over the network, then a freeze penalty:

    effective latency  d = RTT/2 + 2 x jitter + 10 ms
    R = 93.2 - (d/40 if d < 160 else (d - 120)/10) - 2.5 x loss %
    MOS_net = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R)          (clamped to 1..4.5)
    score = MOS_net - 4 x (seconds frozen / seconds observed)  (clamped to 1..4.5)

RTT, jitter and loss are the means over the participant's receiving legs (the browser's
measurement where present, else the server's); 10 % of the time frozen costs 0.4. The call's
score is the mean of its participants'. It needs an RTT; without one it is None.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

BROWSER_SUFFIX = "@browser"


@dataclass(frozen=True)
class Experience:
    """One participant's received quality over a range."""

    participant: str
    browser_data: bool
    freeze_count: int | None = None
    freeze_s: float | None = None
    longest_freeze_s: float | None = None
    jitter_buffer_ms: float | None = None
    concealed_pct: float | None = None
    score: float | None = None
    last_browser_at: datetime | None = None

    def text(self, value: float | int | None, fmt: str) -> str:
        if not self.browser_data:
            return "no browser data"
        return "–" if value is None else format(value, fmt)


def mos_like(rtt_ms: float | None, jitter_ms: float | None, loss_fraction: float | None,
             frozen_fraction: float | None = None) -> float | None:
    """The score of the module docstring; None without an RTT."""
    if rtt_ms is None:
        return None
    d = rtt_ms / 2 + 2 * (jitter_ms or 0.0) + 10.0
    r = 93.2 - (d / 40 if d < 160 else (d - 120) / 10) - 2.5 * 100 * (loss_fraction or 0.0)
    r = max(0.0, min(100.0, r))
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    mos = max(1.0, min(4.5, mos))
    if frozen_fraction:
        mos = max(1.0, mos - 4 * min(1.0, frozen_fraction))
    return round(mos, 2)


@dataclass
class _Counter:
    """Increases of one leg's cumulative counter, across resets (a rebuilt connection)."""

    prev: float | None = None
    total: float = 0.0

    def feed(self, value: float, *, baseline: bool) -> float:
        if self.prev is None:
            inc = 0.0 if baseline else value
        elif value >= self.prev:
            inc = value - self.prev
        else:  # went back: a new connection, counting from 0 again
            inc = value
        self.prev = value
        self.total += inc
        return inc


def freezes(rows: Sequence[Mapping[str, Any]], start: datetime | None = None,
            *, bin_s: int = 1) -> tuple[int, float, float | None]:
    """(freezes, seconds frozen, longest freeze) of one browser leg's rows in time order.

    `start`: the range's start; a leg whose first row is within two bins of it was already
    running, and its first values are the baseline.
    """
    count, frozen = _Counter(), _Counter()
    longest: float | None = None
    for i, r in enumerate(rows):
        fc, fz = r.get("fc"), r.get("fz")
        if fc is None or fz is None:
            continue
        baseline = (i == 0 and start is not None
                    and r["t"] - start <= timedelta(seconds=2 * bin_s))
        d_count = count.feed(float(fc), baseline=baseline)
        d_frozen = frozen.feed(float(fz), baseline=baseline)
        if d_count > 0:
            each = d_frozen / d_count
            longest = each if longest is None else max(longest, each)
    return int(count.total), frozen.total, longest


def _mean(pairs: Iterable[tuple[float | None, float]]) -> float | None:
    total = weight = 0.0
    for value, n in pairs:
        if value is not None:
            total += value * n
            weight += n
    return total / weight if weight else None


def idle_legs(rows: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(participant, leg) of receiving legs that never showed a frame while the same
    participant had another that did (of the same source): the warm spare, bound to nobody.
    Its page conceals 100 % of an audio stream that does not exist; it is left out."""
    moving: dict[tuple[str, str], bool] = {}
    for r in rows:
        if r.get("direction") != "subscribe":
            continue
        key = (r["participant"], r["leg"])
        moving[key] = moving.get(key, False) or (r.get("fps") or 0) > 0
    out = set()
    for (who, leg), moved in moving.items():
        browser = leg.endswith(BROWSER_SUFFIX)
        if not moved and any(m for (w, lg), m in moving.items()
                             if w == who and lg.endswith(BROWSER_SUFFIX) == browser):
            out.add((who, leg))
    return out


def experiences(rows: Sequence[Mapping[str, Any]], participants: Iterable[str],
                start: datetime | None = None, *, bin_s: int = 1) -> list[Experience]:
    """Per participant, from diagnostics rows (short field names, `leg`, `direction`, `t`)."""
    legs: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    idle = idle_legs(rows)
    for r in rows:
        if (r["participant"], r["leg"]) not in idle:
            legs[(r["participant"], r["leg"])].append(r)
    out = []
    for who in participants:
        mine = {leg: rs for (p, leg), rs in legs.items() if p == who}
        browser_rx = [rs for leg, rs in mine.items()
                      if leg.endswith(BROWSER_SUFFIX) and rs[0].get("direction") == "subscribe"]
        browser_any = [rs for leg, rs in mine.items() if leg.endswith(BROWSER_SUFFIX)]
        server_rx = [rs for leg, rs in mine.items()
                     if not leg.endswith(BROWSER_SUFFIX) and rs[0].get("direction") == "subscribe"]
        if not browser_any:
            out.append(Experience(who, False, score=_score(server_rx, None)))
            continue
        n_freezes, frozen, longest = 0, 0.0, None
        for rs in browser_rx:
            c, f, lg = freezes(sorted(rs, key=lambda r: r["t"]), start, bin_s=bin_s)
            n_freezes += c
            frozen += f
            if lg is not None:
                longest = lg if longest is None else max(longest, lg)
        flat = [r for rs in browser_rx for r in rs]
        observed = sum((r.get("n") or 1) * bin_s for r in flat)
        # Each receiving leg is watched at once: the share of time frozen is per leg.
        frozen_fraction = frozen / observed if observed else None
        last = max(r["t"] for rs in browser_any for r in rs)
        out.append(Experience(
            participant=who, browser_data=True,
            freeze_count=n_freezes if browser_rx else None,
            freeze_s=round(frozen, 3) if browser_rx else None,
            longest_freeze_s=None if longest is None else round(longest, 3),
            jitter_buffer_ms=_mean((r.get("jb"), r.get("n") or 1) for r in flat),
            concealed_pct=_mean((r.get("ca"), r.get("n") or 1) for r in flat),
            score=_score(browser_rx or server_rx, frozen_fraction, fallback=server_rx),
            last_browser_at=last,
        ))
    return out


def _score(legs: list[list[Mapping[str, Any]]], frozen_fraction: float | None,
           fallback: list[list[Mapping[str, Any]]] | None = None) -> float | None:
    def mean(field: str) -> float | None:
        got = _mean((r.get(field), r.get("n") or 1) for rs in legs for r in rs)
        if got is None and fallback:
            got = _mean((r.get(field), r.get("n") or 1) for rs in fallback for r in rs)
        return got

    return mos_like(mean("rtt"), mean("j"), mean("lf"), frozen_fraction)


def call_score(people: Sequence[Experience]) -> float | None:
    scores = [p.score for p in people if p.score is not None]
    return round(sum(scores) / len(scores), 2) if scores else None


__all__ = ["Experience", "call_score", "experiences", "freezes", "idle_legs", "mos_like"]
