"""Join benchmark: later participant opens the link -> first decoded remote frame on both sides.

Real app (embedded servers) and real headless Chromium with fake cameras, all in a loopback-only
network namespace. Also: server CPU and RSS per participant during a 30 s two-person call, and
the cost of an open idle session. Writes bench/results/join.json and prints one summary line.

    python bench/join.py [--joins 20] [--call-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt, summary, write  # noqa: E402
from bench._phases import PHASE_KEYS, PHASES_JS, page_phases  # noqa: E402
from videochat.qa.harness import Browser, progress_times, running_app  # noqa: E402

TIMEOUT_S = 30.0

def first_after(page: object, t0: float) -> float | None:
    after = [t for t in progress_times(page) if t > t0]
    return after[0] - t0 if after else None


def one_join(browser: Browser, url: str, room: str) -> dict[str, float | None]:
    ana = browser.new_page()
    ana.goto(f"{url}/call?room={room}&name=ana&join=1")
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and ana.get_by_text("You are alone").count() == 0:
        time.sleep(0.1)
    time.sleep(5.0)  # ana settled: her publish leg and warm spare are up
    load = os.getloadavg()[0]
    t_context = time.time()
    bob = browser.new_page()
    bob.context.add_init_script(PHASES_JS)
    # "Opening the link" starts at navigation: the fresh browser context before it is this
    # harness's stand-in for a browser that is already running (its cost is kept apart).
    t0 = time.time()
    bob.goto(f"{url}/call?room={room}&name=bob&join=1", wait_until="commit")
    a = b = None
    while time.time() - t0 < TIMEOUT_S and (a is None or b is None):
        time.sleep(0.1)
        a = a if a is not None else first_after(ana, t0)
        b = b if b is not None else first_after(bob, t0)
    fast = [e for e in bob.evaluate("() => window.__vcFastLog || []") if e[1] == "answered"]
    phases = page_phases(bob, t0)
    for page in (ana, bob):
        page.context.close()
    both = max(a, b) if a is not None and b is not None else None
    return {"ana_sees_bob_s": a, "bob_sees_ana_s": b, "both_s": both, "load_1m": load,
            "fast_answered_legs": len(fast), "fast_answer_ms": [e[2] for e in fast],
            "new_context_s": t0 - t_context, "bob_phases_s": phases}


def cpu_rss(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    proc.cpu_percent(None)
    samples = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        samples.append(proc.cpu_percent(None))
    return statistics.mean(samples), proc.memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--joins", type=int, default=20)
    ap.add_argument("--call-seconds", type=float, default=30.0)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-join-"))
    trials = []
    with running_app(state, port=8620) as (app, ns):
        assert app.proc is not None
        server = psutil.Process(app.proc.pid)
        browser = Browser(ns)
        try:
            idle_cpu, idle_rss = cpu_rss(server, 10)
            for i in range(args.joins):
                r = one_join(browser, app.url, f"bench-join-{i}")
                trials.append(r)
                print(f"join {i + 1}/{args.joins}: ana sees bob {fmt(r['ana_sees_bob_s'])}, "
                      f"bob sees ana {fmt(r['bob_sees_ana_s'])} (fast-answered legs "
                      f"{r['fast_answered_legs']}, load {r['load_1m']:.1f})", flush=True)
            # 30 s two-person call: server cost per participant
            ana, bob = browser.new_page(), browser.new_page()
            ana.goto(f"{app.url}/call?room=bench-cpu&name=ana&join=1")
            bob.goto(f"{app.url}/call?room=bench-cpu&name=bob&join=1")
            time.sleep(12)
            call_cpu, call_rss = cpu_rss(server, args.call_seconds)
            for p in (ana, bob):
                p.context.close()
            time.sleep(5)
            # open idle sessions (join form, no media): what an open tab costs the server
            idle_pages = [browser.new_page(probe=False) for _ in range(4)]
            for p in idle_pages:
                p.goto(f"{app.url}/call")
            time.sleep(5)
            tabs_cpu, tabs_rss = cpu_rss(server, 20)
            for p in idle_pages:
                p.context.close()
        finally:
            browser.close()
    both = [t["both_s"] for t in trials if t["both_s"] is not None]
    failures = sum(1 for t in trials if t["both_s"] is None)
    within_3s = sum(1 for v in both if v <= 3.0)
    within_1s = sum(1 for v in both if v <= 1.0)
    fast_ms = [float(ms) for t in trials for ms in t.get("fast_answer_ms", [])]
    phases = {k: summary([t["bob_phases_s"][k] for t in trials if k in t["bob_phases_s"]])
              for k in PHASE_KEYS}
    result = {
        "what": "later participant opens /call?room&name&join=1 (page navigation starts) -> "
                "first decoded remote frame, both directions (max of the two); the fresh "
                "browser context created just before is new_context_s",
        "joins": len(trials), "failures": failures, "within_3s": within_3s,
        "within_1s": within_1s,
        "fast_signalling_answer_ms": summary(fast_ms),
        "bob_phases_s": phases,
        "new_context_s": summary([t["new_context_s"] for t in trials]),
        "load_1m_at_joins": summary([t["load_1m"] for t in trials]),
        "both": summary(both),
        "ana_sees_bob": summary([t["ana_sees_bob_s"] for t in trials
                                 if t["ana_sees_bob_s"] is not None]),
        "bob_sees_ana": summary([t["bob_sees_ana_s"] for t in trials
                                 if t["bob_sees_ana_s"] is not None]),
        "trials": trials,
        "server_idle_cpu_percent": idle_cpu,
        "server_idle_rss_mib": idle_rss,
        "call_2p_server_cpu_percent": call_cpu,
        "call_2p_cpu_percent_per_participant": call_cpu / 2,
        "call_2p_rss_mib": call_rss,
        "call_2p_rss_mib_per_participant_over_idle": (call_rss - idle_rss) / 2,
        "four_idle_tabs_cpu_percent": tabs_cpu,
        "idle_tab_cpu_percent_each": (tabs_cpu - idle_cpu) / 4,
        "four_idle_tabs_rss_mib": tabs_rss,
    }
    path = write("join", result)
    s = result["both"]
    med = {k: fmt(v["median"]) for k, v in phases.items()}
    print(f"join: {len(trials)} joins, {failures} failed, {within_3s} within 3 s; both directions "
          f"median {fmt(s['median'])} p95 {fmt(s['p95'])} (bob's websocket open p50 "
          f"{med['ws_open']}, component {med['component_document']}, answer "
          f"{med['answer_set']}); 2-party call server CPU "
          f"{call_cpu / 2:.0f} %/participant, RSS {call_rss:.0f} MiB; idle tab "
          f"{(tabs_cpu - idle_cpu) / 4:.1f} % CPU -> {path}")


if __name__ == "__main__":
    main()
