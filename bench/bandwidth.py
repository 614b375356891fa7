"""Bandwidth benchmark: what a person on a thin downlink sees, through the real app.

Each profile is a QA scenario (`videochat.qa.runner`: the real app, headless Chromium pages with
Chrome's fake 640x480 camera, the fault injector, in a loopback-only namespace) run as it is;
this script only chooses the scenarios and reads more figures out of each run than its
objectives do. Profiles (the fault always on alice's downlink, `direction = "down"`):

* `thin-200k`: alice and bob, both browsers (so bob's stream can be forwarded to alice as it is),
  200 kbps for 20 s. Target: video keeps moving at >= 8 fps on a low rung, audio intact.
* `1m-600ms`: the same call, 1 Mbps with 600 ms latency for 20 s. Target: >= 15 fps at >= 360p.
* `bandwidth-300kbps`: the built-in scenario as it is (its publisher is a bot, whose frames are
  always transcoded), with its own objectives' pass/fail.

Per profile and trial, during the fault window (from the app's `fault_started` to `fault_ended`):
received fps (median and p10 of what alice's page reported decoding each second, getStats),
the same from 5 s into the fault on (the ladder has reacted by then), the rungs and deliveries
held (seconds of alice's receiving video leg at each "rung/delivery", the server's samples),
rung changes (`quality_changed` events: oscillation) and delivery switches, and audio: the
percentage of samples alice's browser concealed (mean, max) and the loss the server's audio
leg was told (receiver reports). Every objective's verdict is kept too.

Writes bench/results/bandwidth.json and prints one summary line.

    python bench/bandwidth.py [--trials 1] [--profiles thin-200k,1m-600ms,bandwidth-300kbps]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import pct, write  # noqa: E402
from videochat.metrics.stats import MetricSample  # noqa: E402
from videochat.qa.assertions import FaultWindow, Sample, TimelineEvent  # noqa: E402
from videochat.qa.scenario import Scenario, find_scenario, parse_scenario  # noqa: E402

VIEWER = "alice"  # whose downlink the fault thins, in every profile
SETTLE_S = 5.0  # "settled" figures start this far into the fault: the ladder has reacted

CALL = """
name = "{name}"
description = "{description}"
duration_s = 40

[[participants]]
name = "alice"
kind = "browser"

[[participants]]
name = "bob"
kind = "browser"

{steps}
[assertions]
min_fps_during_faults = {min_fps}
max_reconnects = 0
"""
# A fresh leg probes 720p30 after 7 s of good conditions; starting the fault 15 s in keeps
# that probe out of it (built-in bandwidth-300kbps starts at 20 s for the same reason).
STEP = """[[timeline]]
at_s = 15
kind = "{kind}"
target = "alice"
direction = "down"
duration_s = 20
{param}
"""


def _call(name: str, description: str, min_fps: float, *steps: tuple[str, str]) -> Scenario:
    text = CALL.format(name=name, description=description, min_fps=min_fps,
                       steps="".join(STEP.format(kind=k, param=p) for k, p in steps))
    return parse_scenario(text, f"bench/bandwidth.py:{name}")


def profiles() -> dict[str, tuple[Scenario, dict[str, Any]]]:
    """name -> (scenario, target)."""
    return {
        "thin-200k": (_call("bench-thin-200k", "200 kbps downlink for 20 s", 8,
                            ("bandwidth", "kbps = 200")),
                      {"min_fps": 8, "audio": "intact"}),
        "1m-600ms": (_call("bench-1m-600ms", "1 Mbps, 600 ms downlink for 20 s", 15,
                           ("bandwidth", "kbps = 1000"), ("latency", "ms = 600")),
                     {"min_fps": 15, "min_rung": "360p24"}),
        "bandwidth-300kbps": (find_scenario("bandwidth-300kbps"), {"objectives": "pass"}),
    }


# ---------------------------------------------------------------------------- the figures
def fault_span(windows: Sequence[FaultWindow], who: str = VIEWER) -> tuple[float, float] | None:
    """From the first fault on `who` starting to the last one ending (a profile's faults start
    and end together)."""
    mine = [w for w in windows if w.target in (who, "room")]
    if not mine:
        return None
    return min(w.start_s for w in mine), max(w.end_s for w in mine)


def _r(v: float | None, digits: int = 1) -> float | None:
    return None if v is None else round(v, digits)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "median": _r(statistics.median(values) if values else None),
            "p10": _r(pct(values, 0.10)), "min": _r(min(values) if values else None)}


def summarize(span: tuple[float, float] | None, received_fps: Iterable[Sample],
              events: Iterable[TimelineEvent], samples: Iterable[MetricSample],
              t0: datetime, who: str = VIEWER) -> dict[str, Any]:
    """What `who` got during the fault (pure: unit-tested in tests/test_bandwidth_bench.py)."""
    if span is None:
        return {"error": "no fault window"}
    start, end = span

    def inside(t: float, settle: float = 0.0) -> bool:
        return start + settle <= t <= end

    fps = [s for s in received_fps if s.series.startswith(f"{who} ")]
    out: dict[str, Any] = {
        "fault_s": [round(start, 1), round(end, 1)],
        "fps": _stats([s.value for s in fps if inside(s.t_s)]),
        "fps_settled": _stats([s.value for s in fps if inside(s.t_s, SETTLE_S)]),
    }
    changes = [e for e in events if e.kind == "quality_changed" and e.participant == who
               and inside(e.t_s)]
    out["rung_changes"] = len(changes)
    out["rung_change_list"] = [f"{e.t_s - start:.1f}s {e.detail}" for e in changes]

    mine = [s for s in samples if s.participant == who and s.direction == "subscribe"]
    server_video = [s for s in mine if s.source == "server" and s.kind == "video"]
    carried = {s.leg for s in server_video if (s.fps or 0) > 0}  # not the warm spare
    held: Counter[str] = Counter()
    switches = 0
    for leg in sorted(carried):
        last: str | None = None
        for s in sorted((x for x in server_video if x.leg == leg), key=lambda x: x.at):
            if not inside((s.at - t0).total_seconds()):
                continue
            held[f"{s.quality}/{s.delivery}"] += 1
            if last is not None and s.delivery != last:
                switches += 1
            last = s.delivery
    out["held_s"] = dict(held.most_common())
    out["delivery_switches"] = switches
    out["timeline"] = _timeline(mine, carried, start, end, t0)

    def during(kind: str, source: str) -> list[MetricSample]:
        return [s for s in mine if s.kind == kind and s.source == source
                and inside((s.at - t0).total_seconds())]

    concealed = [s.concealed_pct for s in during("video", "browser")
                 if s.concealed_pct is not None]
    loss = [s.loss_fraction for s in during("audio", "server") if s.loss_fraction is not None]
    out["audio"] = {
        "concealed_pct_mean": _r(statistics.fmean(concealed) if concealed else None, 2),
        "concealed_pct_max": _r(max(concealed) if concealed else None, 2),
        "loss_pct_mean": _r(100 * statistics.fmean(loss) if loss else None, 2),
        "samples": len(concealed),
    }
    return out


def _timeline(mine: list[MetricSample], carried: set[str], start: float, end: float,
              t0: datetime) -> list[list[Any]]:
    """Per second from 5 s before the fault to 5 s after it: [t from the fault's start,
    "rung/delivery", server kbps out, page fps, page concealed %], to see what happened."""
    rows: dict[int, list[Any]] = {}
    for s in mine:
        t = (s.at - t0).total_seconds()
        if not start - 5 <= t <= end + 5:
            continue
        row = rows.setdefault(round(t - start), [round(t - start), None, None, None, None])
        if s.source == "server" and s.kind == "video" and s.leg in carried:
            row[1] = f"{s.quality}/{s.delivery}"
            row[2] = _r(s.bitrate_out_kbps, 0)
        elif s.source == "browser" and s.fps is not None and (s.fps > 0 or row[3] is None):
            row[3], row[4] = _r(s.fps), _r(s.concealed_pct)
    return [rows[k] for k in sorted(rows)]


def run_profile(name: str, scenario: Scenario, target: dict[str, Any],
                keep: Path | None = None) -> dict[str, Any]:
    """One QA run of `scenario` by the QA runner, in a fresh state folder (we are inside the
    run's namespace already), and its figures. With `keep`, the folder (app log, report)
    stays there."""
    from videochat.qa.runner import RunOptions, ScenarioRun

    folder = Path(tempfile.mkdtemp(prefix=f"vc-bench-bw-{name}-", dir=keep))
    try:
        options = RunOptions(report=folder / "report.json", state_dir=folder / "app",
                             store=False, progress=lambda msg: print(f"  [{name}] {msg}",
                                                                     file=sys.stderr,
                                                                     flush=True))
        run = ScenarioRun(scenario, options)
        started = time.monotonic()
        result = run.execute()
        m = result.measurements
        out = summarize(fault_span(m.fault_windows), m.received_fps or [], m.events or [],
                        run.samples, run.t0 or result.started_at)
        out.update({
            "profile": name, "target": target, "run_s": round(time.monotonic() - started, 1),
            "error": result.error or out.get("error"),
            "objectives": [{"name": r.name, "passed": r.passed, "detail": r.detail}
                           for r in result.results],
            "passed": result.passed,
            "notes": result.notes,
        })
        if keep is not None:
            out["folder"] = str(folder)
        return out
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _median(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return _r(statistics.median(vs)) if vs else None


def aggregate(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the trials of one profile."""
    held: Counter[str] = Counter()
    for t in trials:
        held.update(t.get("held_s") or {})
    return {
        "trials": len(trials),
        "fps_median": _median([t.get("fps", {}).get("median") for t in trials]),
        "fps_p10": _median([t.get("fps", {}).get("p10") for t in trials]),
        "fps_settled_median": _median([t.get("fps_settled", {}).get("median") for t in trials]),
        "fps_settled_p10": _median([t.get("fps_settled", {}).get("p10") for t in trials]),
        "rung_changes": _median([t.get("rung_changes") for t in trials]),
        "delivery_switches": _median([t.get("delivery_switches") for t in trials]),
        "held_s": dict(held.most_common()),
        "concealed_pct_mean": _median([t.get("audio", {}).get("concealed_pct_mean")
                                       for t in trials]),
        "audio_loss_pct_mean": _median([t.get("audio", {}).get("loss_pct_mean")
                                        for t in trials]),
        "passed": sum(bool(t.get("passed")) for t in trials),
        "errors": [t["error"] for t in trials if t.get("error")],
    }


def _line(name: str, agg: dict[str, Any]) -> str:
    top = max(agg["held_s"], key=agg["held_s"].get) if agg["held_s"] else "n/a"
    return (f"{name}: fps med {agg['fps_median']} p10 {agg['fps_p10']} "
            f"(settled {agg['fps_settled_median']}/{agg['fps_settled_p10']}), {top}, "
            f"{agg['rung_changes']} changes, concealed {agg['concealed_pct_mean']} %, "
            f"pass {agg['passed']}/{agg['trials']}")


# ---------------------------------------------------------------------------- entry points
def inside(args: argparse.Namespace) -> int:
    chosen = profiles()
    names = [n for n in args.profiles.split(",") if n]
    unknown = [n for n in names if n not in chosen]
    if unknown:
        print(f"error: unknown profile(s) {unknown}; known: {', '.join(chosen)}",
              file=sys.stderr)
        return 2
    per: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for trial in range(args.trials):
        for name in names:
            scenario, target = chosen[name]
            print(f"trial {trial + 1}/{args.trials}: {name}", file=sys.stderr, flush=True)
            per[name].append(run_profile(name, scenario, target, args.keep))
    result = {"profiles": {n: {"summary": aggregate(ts), "trials": ts} for n, ts in per.items()}}
    path = write("bandwidth", result)
    print(json.dumps({n: v["summary"] for n, v in result["profiles"].items()}),
          file=sys.stderr)
    print("; ".join(_line(n, v["summary"]) for n, v in result["profiles"].items())
          + f" ({path.name})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1, help="runs of each profile")
    ap.add_argument("--profiles", default="thin-200k,1m-600ms,bandwidth-300kbps",
                    help="comma-separated profile names")
    ap.add_argument("--keep", type=Path, help="keep each run's folder (app log, report) here")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from videochat.qa.harness import NetNamespace, netns_available

    if args.inside or not netns_available():
        return inside(args)
    # As `qa run` does: the app, its embedded servers, Chromium and the runner's own clients
    # must share one loopback, so the whole benchmark runs inside one fresh namespace.
    budget = args.trials * 150 * len(args.profiles.split(",")) + 120
    with NetNamespace() as ns:
        cmd = [*ns.prefix(), sys.executable, str(Path(__file__).resolve()),
               "--trials", str(args.trials), "--profiles", args.profiles, "--inside"]
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            cmd += ["--keep", str(args.keep.resolve())]
        try:
            return subprocess.run(cmd, timeout=budget).returncode
        except subprocess.TimeoutExpired:
            print(f"error: not done within {budget} s; stopped", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
