"""Restart benchmark: a two-browser call survives its app process being stopped (SIGTERM) or
killed (SIGKILL) and started again in the same folder (issue 17).

One app in a loopback-only namespace, two headless Chromium pages (`ana`, `bob`) in a call,
joined by link. Each trial stops or kills the app process alone (its embedded servers live on
or are restarted, as the app decides), starts it again on the same port and state folder and
measures, from the moment the new process answers `/_stcore/health` (polled every 50 ms from
inside the namespace), until remote video moves again on both pages (the 3rd new frame of a
remote tile, recorded in each page by the harness's progress probe). Per trial, the phases
(seconds after health): each page's restart watch deciding to reload (`reload_s`), each
participant back in its seat (`rejoined_s`, the app's `participant_joined` event), the page's
own marks after its reload (`phases_s`: Streamlit's websocket, camera, each connection's
offer/answer/connected, as in bench/join.py), and video moving again (`video_s`, per page).
A trial that is not back within 30 s is a failure; its pages are then opened afresh.

Writes bench/results/restart.json and prints one summary line.

    python bench/restart.py [--trials 10] [--kinds term,kill]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt, summary, write  # noqa: E402
from bench._phases import PHASE_KEYS, PHASES_JS, page_phases  # noqa: E402
from videochat.backends.embedded import free_port  # noqa: E402
from videochat.qa.harness import (  # noqa: E402
    AppProcess,
    Browser,
    NetNamespace,
    first_progress_after,
)

ENV = {"VIDEOCHAT_CAPTURE": "320x240@15", "VIDEOCHAT_RECONNECT_GRACE_S": "10"}
BACK_WITHIN_S = 30.0
TARGET_S = 5.0
ROOM = "bench-restart"

# Polls health every 50 ms and prints the epoch time of the first answer.
HEALTH_POLL = """
import sys, time, urllib.request as u
url = sys.argv[1]
while True:
    try:
        u.urlopen(url, timeout=0.5)
        print(time.time(), flush=True)
        break
    except Exception:
        time.sleep(0.05)
"""


def open_call(browser: Browser, app: AppProcess) -> dict[str, Any]:
    pages = {}
    for name in ("ana", "bob"):
        page = browser.new_page()
        page.context.add_init_script(PHASES_JS)  # runs again in each document a reload loads
        page.goto(f"{app.url}/call?room={ROOM}&name={name}&join=1", wait_until="commit")
        pages[name] = page
    return pages


def moving_since(pages: dict[str, Any], t: float, timeout: float) -> dict[str, float | None]:
    """Epoch time each page's remote video moved again after `t` (None: not within timeout)."""
    out: dict[str, float | None] = {name: None for name in pages}
    deadline = time.time() + timeout
    while time.time() < deadline and None in out.values():
        time.sleep(0.25)
        for name, page in pages.items():
            if out[name] is None:
                try:
                    out[name] = first_progress_after(page, t)
                except Exception:  # noqa: BLE001 - the page is between documents
                    pass
    return out


def one_trial(app: AppProcess, ns: NetNamespace, pages: dict[str, Any], kind: str,
              i: int) -> dict[str, Any]:
    stop_at = time.time()
    if kind == "kill":
        app.kill()
    else:
        app.terminate()
    stopped = time.time()
    poll = subprocess.Popen(ns.prefix() + [sys.executable, "-c", HEALTH_POLL,
                                           f"{app.url}/_stcore/health"],
                            stdout=subprocess.PIPE, text=True)
    app.start()
    health = float((poll.stdout.readline() if poll.stdout else "") or time.time())
    poll.wait(5)
    moved = moving_since(pages, health, BACK_WITHIN_S)
    out: dict[str, Any] = {"trial": i, "kind": kind,
                           "stop_s": round(stopped - stop_at, 2),
                           "down_s": round(health - stopped, 2)}
    video = {n: (None if t is None else round(t - health, 2)) for n, t in moved.items()}
    out["video_s"] = video
    out["back_s"] = (None if None in video.values()
                     else max(v for v in video.values() if v is not None))
    reloads = {}
    for name, page in pages.items():
        try:
            at = float(page.evaluate("() => sessionStorage.getItem('vc-reloaded-at') || 0"))
        except Exception:  # noqa: BLE001
            at = 0.0
        reloads[name] = round(at / 1000 - health, 2) if at / 1000 > stop_at else None
    out["reload_s"] = reloads
    phases: dict[str, dict[str, float]] = {}
    for name, page in pages.items():
        try:
            phases[name] = page_phases(page, health)
        except Exception:  # noqa: BLE001 - a phase is a detail; the figure is video_s
            phases[name] = {}
    out["phases_s"] = phases
    try:
        joined = app.events(health - 5, ["participant_joined"])
        out["rejoined_s"] = {e["participant"]: round(e["at"] - health, 2) for e in joined
                             if e["data"].get("rejoined")}
    except Exception as exc:  # noqa: BLE001 - a phase is a detail; the figure is video_s
        out["rejoined_s"] = str(exc)[:200]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kinds", default="term,kill")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in ("term", "kill"):
            raise SystemExit(f"--kinds: {k!r} is not 'term' or 'kill'")
    runs: list[dict[str, Any]] = []
    with NetNamespace() as ns:
        state = Path(tempfile.mkdtemp(prefix="bench-restart-"))
        app = AppProcess(state, port=free_port(), netns=ns, env=ENV)
        app.start()
        browser = Browser(ns)
        try:
            pages = open_call(browser, app)
            first = moving_since(pages, time.time() - 60, 60)
            if None in first.values():
                raise SystemExit(f"the call never started: {first}; see {app.log_path}")
            time.sleep(2)
            for kind in kinds:
                for i in range(args.trials):
                    r = one_trial(app, ns, pages, kind, i)
                    runs.append(r)
                    print(f"{kind} {i + 1}/{args.trials}: video both ways {fmt(r['back_s'])} "
                          f"after health (pages {r['video_s']}, reload {r['reload_s']}, "
                          f"rejoined {r['rejoined_s']}, down {r['down_s']} s)", flush=True)
                    if r["back_s"] is None:
                        for page in pages.values():
                            page.context.close()
                        pages = open_call(browser, app)
                        moving_since(pages, time.time(), 60)
                    time.sleep(2)
        finally:
            browser.close()
            app.stop()
    result: dict[str, Any] = {
        "what": "seconds from the restarted app answering /_stcore/health to remote video "
                "moving again on both pages of a two-browser call",
        "target_s": TARGET_S, "kinds": {},
    }
    parts = []
    for kind in kinds:
        mine = [r for r in runs if r["kind"] == kind]
        back = [r["back_s"] for r in mine if r["back_s"] is not None]
        within = sum(1 for v in back if v <= TARGET_S)
        result["kinds"][kind] = {
            "trials": len(mine), "failures": len(mine) - len(back), "within_target": within,
            "back_s": summary(back), "down_s": summary([r["down_s"] for r in mine]),
            # Medians over both pages of every trial: where the time after health goes.
            "phases_s": {k: summary([p[k] for r in mine for p in r["phases_s"].values()
                                     if k in p])["median"] for k in PHASE_KEYS}}
        s = result["kinds"][kind]["back_s"]
        parts.append(f"{kind} {within}/{len(mine)} within {TARGET_S:.0f} s, median "
                     f"{fmt(s['median'])}, max {fmt(s['max'])}, "
                     f"{len(mine) - len(back)} failures")
    result["runs"] = runs
    path = write("restart", result)
    print(f"restart: {'; '.join(parts)} -> {path}")


if __name__ == "__main__":
    main()
