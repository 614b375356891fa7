"""Reconnect benchmark: blackouts of 2, 8 and 40 s and killed connections in a live 2-party call.

Real app + two headless Chromium participants in a loopback-only namespace; faults are injected
with the command line (`python -m videochat faults inject`, through Redis, like a user would).
Per trial: detection time (fault start -> `reconnect_started`, from the events in MongoDB) and
time until video moves again in BOTH browsers after the fault ends (first 3 new frames seen by
the in-page probe). Also the quality ladder: 30 % loss -> first step down, and back to the top
after the loss is cleared. Writes bench/results/reconnect.json and prints one summary line.

    python bench/reconnect.py [--trials 10] [--kinds blackout2,blackout8,blackout40,kill,ladder]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt, summary, write  # noqa: E402
from videochat.qa.harness import (  # noqa: E402
    PROJECT_ROOT,
    AppProcess,
    Browser,
    NetNamespace,
    first_progress_after,
    progress_times,
    read_events,
    resumed_after_stall,
)

ROOM = "bench-rc"


def cli(ns: NetNamespace, state: Path, *args: str) -> dict[str, Any]:
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(state))
    out = subprocess.run(ns.prefix() + [sys.executable, "-m", "videochat", "faults", *args],
                         env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"faults {' '.join(args)} failed: {out.stderr or out.stdout}")
    return {"stdout": out.stdout}


def active_fault(ns: NetNamespace, state: Path) -> dict[str, Any] | None:
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(state))
    out = subprocess.run(ns.prefix() + [sys.executable, "-m", "videochat", "faults", "list",
                                        "--json"], env=env, cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    items = json.loads(out.stdout or "[]")
    return items[0] if items else None


def wait_flowing(pages: list[Any], timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(first_progress_after(p, time.time() - 1.0, 5) for p in pages):
            return True
        time.sleep(0.5)
    return False


def trial(ns: NetNamespace, state: Path, pages: list[Any], kind: str) -> dict[str, Any]:
    if not wait_flowing(pages):
        return {"kind": kind, "error": "call not flowing before the trial"}
    duration = {"blackout2": 2, "blackout8": 8, "blackout40": 40}.get(kind, 0)
    args = (["--kind", "blackout", "--duration", str(duration)] if duration
            else ["--kind", "kill"])
    t_cmd = time.time()
    cli(ns, state, "inject", "--room", ROOM, "--participant", "bob", *args)
    if duration:
        fault = active_fault(ns, state)
        start = float(fault["since"]) if fault else t_cmd
    else:
        # A kill has no duration: time it from the moment the app closed the legs (its
        # fault_started event), not from the command, whose start-up is not the app's doing.
        start = kill_time(ns, state, t_cmd) or t_cmd
    end = start + duration
    deadline = end + 45
    resumed: list[float | None] = [None, None]
    while time.time() < deadline and None in resumed:
        time.sleep(0.5)
        for i, page in enumerate(pages):
            if resumed[i] is None:
                resumed[i] = (first_progress_after(page, end, 3) if duration
                              else resumed_after_stall(progress_times(page), end))
    time.sleep(1.5)  # let the metrics store flush the events
    evs = read_events(ns, state, start - 0.5, ["reconnect_started", "reconnect_succeeded"])
    started = next((e for e in evs if e["kind"] == "reconnect_started"), None)
    done = next((e for e in evs if e["kind"] == "reconnect_succeeded"), None)
    both = None if None in resumed else max(r for r in resumed if r is not None) - end
    return {
        "kind": kind, "fault_start": start, "fault_end": end,
        "detection_s": (started["at"] - start) if started else None,
        "reconnect_duration_s": (done["data"].get("duration_s") if done else None),
        "ana_video_moving_after_end_s": None if resumed[0] is None else resumed[0] - end,
        "bob_video_moving_after_end_s": None if resumed[1] is None else resumed[1] - end,
        "both_moving_after_end_s": both,
    }


def kill_time(ns: NetNamespace, state: Path, since: float) -> float | None:
    for _ in range(20):
        evs = read_events(ns, state, since - 0.5, ["fault_started"])
        kills = [e for e in evs if e["data"].get("fault_kind") == "kill"]
        if kills:
            return float(kills[0]["at"])
        time.sleep(0.25)
    return None


def ladder_trial(ns: NetNamespace, state: Path) -> dict[str, Any]:
    t0 = time.time()
    cli(ns, state, "inject", "--room", ROOM, "--participant", "ana", "--kind", "loss",
        "--percent", "30", "--direction", "down", "--duration", "15")
    fault = active_fault(ns, state)
    start = float(fault["since"]) if fault else t0
    time.sleep(15 + 25)
    evs = read_events(ns, state, start - 0.5, ["quality_changed"])
    ana = [e for e in evs if e["participant"] == "ana"]
    # Settle before the next trial: trouble within 10 s of an up-step counts as a failed probe
    # and doubles the policy's wait before it climbs (anti-flap), which would time the
    # backoff, not the ladder. Wait until the leg is back on top and 12 s past its last change.
    for _ in range(12):
        last = ana[-1] if ana else None
        if last is None or (last["data"].get("to_level") == "720p30"
                            and time.time() - last["at"] >= 12):
            break
        time.sleep(5)
        evs = read_events(ns, state, start - 0.5, ["quality_changed"])
        ana = [e for e in evs if e["participant"] == "ana"]
    downs = [e for e in ana if e["data"].get("direction") == "down"]
    ups = [e for e in ana if e["data"].get("direction") == "up" and e["at"] > start + 15]
    top = next((e for e in ups if e["data"].get("to_level") == "720p30"), None)
    return {
        "first_step_down_s": (downs[0]["at"] - start) if downs else None,
        "first_step_up_after_clear_s": (ups[0]["at"] - start - 15) if ups else None,
        "back_to_top_after_clear_s": (top["at"] - start - 15) if top else None,
        "changes": [(round(e["at"] - start, 2), e["data"].get("to_level")) for e in ana],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kinds", default="blackout2,blackout8,blackout40,kill,ladder")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    state = Path(tempfile.mkdtemp(prefix="bench-rc-"))
    results: list[dict[str, Any]] = []
    ladder: list[dict[str, Any]] = []
    with NetNamespace() as ns:
        app = AppProcess(state, port=8621, netns=ns)
        app.start()
        browser = Browser(ns)
        try:
            pages = []
            for name in ("ana", "bob"):
                page = browser.new_page()
                page.goto(f"{app.url}/call?room={ROOM}&name={name}&join=1")
                pages.append(page)
                time.sleep(2)
            for kind in kinds:
                for i in range(args.trials if kind != "ladder" else max(1, args.trials // 3)):
                    if kind == "ladder":
                        r = ladder_trial(ns, state)
                        ladder.append(r)
                        print(f"ladder {i + 1}: down {fmt(r['first_step_down_s'])}, up "
                              f"{fmt(r['first_step_up_after_clear_s'])}, top "
                              f"{fmt(r['back_to_top_after_clear_s'])}", flush=True)
                        continue
                    r = trial(ns, state, pages, kind)
                    results.append(r)
                    write("reconnect-partial", {"trials": results, "ladder": ladder})
                    print(f"{kind} {i + 1}/{args.trials}: detect {fmt(r.get('detection_s'))}, "
                          f"both moving {fmt(r.get('both_moving_after_end_s'))} after the end",
                          flush=True)
                    time.sleep(3)
        finally:
            browser.close()
            app.stop()
    out: dict[str, Any] = {"trials": results, "ladder": ladder}
    line = []
    for kind in kinds:
        if kind == "ladder":
            continue
        rs = [r for r in results if r["kind"] == kind]
        moving = [r["both_moving_after_end_s"] for r in rs if r.get("both_moving_after_end_s")
                  is not None]
        det = [r["detection_s"] for r in rs if r.get("detection_s") is not None]
        out[kind] = {"detection": summary(det), "video_moving_after_end": summary(moving),
                     "failures": len(rs) - len(moving)}
        line.append(f"{kind}: detect p50 {fmt(summary(det)['median'])}, moving p50 "
                    f"{fmt(summary(moving)['median'])} p95 {fmt(summary(moving)['p95'])} "
                    f"({len(rs) - len(moving)} failed)")
    if ladder:
        downs = [r["first_step_down_s"] for r in ladder if r["first_step_down_s"] is not None]
        ups = [r["first_step_up_after_clear_s"] for r in ladder
               if r["first_step_up_after_clear_s"] is not None]
        tops = [r["back_to_top_after_clear_s"] for r in ladder
                if r["back_to_top_after_clear_s"] is not None]
        out["ladder_summary"] = {"step_down": summary(downs), "first_step_up": summary(ups),
                                 "back_to_top": summary(tops)}
        line.append(f"ladder: down p50 {fmt(summary(downs)['median'])}, first up p50 "
                    f"{fmt(summary(ups)['median'])}, top p50 {fmt(summary(tops)['median'])}")
    path = write("reconnect", out)
    print("reconnect: " + "; ".join(line) + f" -> {path}")


if __name__ == "__main__":
    _ = datetime
    main()
