"""Soak benchmark: a long call under rolling faults; memory growth and what is left afterwards.

Real app (`streamlit run app.py`, embedded Valkey + SecantusDB) and 2-4 headless Chromium
participants (optionally bots) in one room, all inside a loopback-only network namespace (the
script re-runs itself inside one). Before anyone joins, one page that does not join wakes the
app's runtime and the idle baseline is read from the app's own `process_health` documents
(videochat/metrics/process_health.py: threads, media-loop tasks, live/open RTCPeerConnection
objects, legs).
Then a rolling, bounded timeline of faults is injected through the command line
(`python -m videochat faults inject`): loss 10-30 %, latency with jitter, a 300 kbps cap,
blackouts of 2-8 s, killed connections, and a participant who leaves and rejoins. Every 10 s the
app process is also sampled with psutil (RSS, threads, fds, CPU) from here.

Reported: RSS at the end of the warm-up vs at the end (median of the last minute of each), growth
%, peak and slope after warm-up; thread/task/peer-connection counts over time; then everyone
leaves (one clicks Leave, the others close their tabs, bots are removed), the script waits for
the reconnect grace plus a margin and until the sampler ran a full GC, and reports what is left
against the idle baseline. Verdict fields: memory_growth_pct, leftover_peer_connections,
leftover_tasks_over_baseline, leftover_threads_over_baseline (raw, against the idle baseline),
leftover_*_unexplained (minus what the first call starts for good: one supervisor/sampler task,
one chat-hub/metrics-writer thread, the media loop's bounded default executor; see
ALLOWED_TASKS), passed (growth <= 10 %, no peer connection, leg or unexplained task/thread left).
Writes bench/results/soak.json and prints one summary line.

    python bench/soak.py --minutes 30 --participants 3 [--bots 1] [--warmup-minutes 4]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write  # noqa: E402
from videochat.backends.embedded import EmbeddedServers  # noqa: E402
from videochat.qa.harness import (  # noqa: E402
    PROJECT_ROOT,
    AppProcess,
    Browser,
    NetNamespace,
    decoded_frames,
    netns_available,
)

ROOM = "bench-soak"
NAMES = ["ana", "bob", "carol", "dave"]
SAMPLE_S = 10.0
GROWTH_GOAL_PCT = 10.0
JOIN_TIMEOUT_S = 120.0  # the shared 2-core box is often loaded


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the fault timeline ---------------------------------------------------------------------
def plan(minutes: float, people: list[str], seed: int, grace_s: float) -> list[dict[str, Any]]:
    """Bounded steps, one at a time, each followed by 8-15 s of calm: (at_s, kind, args)."""
    rng = random.Random(seed)
    total = minutes * 60
    kinds = ["kill", "loss", "blackout", "latency", "bandwidth"]  # short runs see the rough ones
    lo, hi = (15, 30) if minutes >= 10 else (10, 20)
    # One leave-and-rejoin per 10 minutes (at least one), away from the start and the end.
    rejoins = [total * (i + 0.45) / max(1, round(minutes / 10))
               for i in range(max(1, round(minutes / 10)))]
    steps: list[dict[str, Any]] = []
    t = 20.0  # media settles first
    i = 0
    while True:
        if rejoins and t >= rejoins[0] and t + grace_s + 30 < total:
            rejoins.pop(0)
            who = rng.choice(people[1:])  # not the one who clicks Leave at the end
            steps.append({"at_s": t, "kind": "rejoin", "participant": who,
                          "duration_s": grace_s + 5})
            t += grace_s + 5 + 20
            continue
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        i += 1
        who = rng.choice(people)
        step: dict[str, Any] = {"at_s": t, "kind": kind, "participant": who}
        if kind == "loss":
            step.update(percent=rng.choice([10, 20, 30]), duration_s=rng.randint(lo, hi),
                        direction=rng.choice(["up", "down", "both"]))
        elif kind == "latency":
            step.update(ms=rng.choice([100, 200, 300]), jitter=rng.choice([20, 50, 80]),
                        duration_s=rng.randint(lo, hi))
        elif kind == "bandwidth":
            step.update(kbps=300, duration_s=rng.randint(lo, hi),
                        direction=rng.choice(["up", "down"]))
        elif kind == "blackout":
            step.update(duration_s=rng.randint(2, 8))
        else:
            step.update(duration_s=0)
        # A killed leg or a blackout is followed by a rebuild: give it time before the next.
        calm = rng.uniform(8, 15) + (10 if kind in ("kill", "blackout") else 0)
        if t + step["duration_s"] + calm > total:
            break
        steps.append(step)
        t += step["duration_s"] + calm
    return steps


def cli_args(step: dict[str, Any]) -> list[str]:
    args = ["inject", "--room", ROOM, "--participant", step["participant"],
            "--kind", step["kind"]]
    for key in ("percent", "ms", "jitter", "kbps", "direction"):
        if key in step:
            args += [f"--{key}", str(step[key])]
    if step["kind"] != "kill":
        args += ["--duration", str(step["duration_s"])]
    return args


def faults_cli(state: Path, args: list[str]) -> tuple[bool, str]:
    env = _env(state)
    try:
        out = subprocess.run([sys.executable, "-m", "videochat", "faults", *args], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    return out.returncode == 0, (out.stdout + out.stderr).strip()[-300:]


def _env(state: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_URL", "MONGODB_URI", "VIDEOCHAT_"))}
    env["VIDEOCHAT_STATE_DIR"] = str(state)
    return env


# -- measuring ------------------------------------------------------------------------------
class Probe:
    """psutil on the app process (from here) and its process_health documents (from MongoDB)."""

    def __init__(self, pid: int, db: Any, t0: float) -> None:
        self.proc = psutil.Process(pid)
        self.proc.cpu_percent(None)
        self.pid = pid
        self.db = db
        self.t0 = t0
        self.samples: list[dict[str, Any]] = []
        self.next_at = 0.0

    def tick(self, pages: dict[str, Any]) -> None:
        now = time.time()
        if now < self.next_at:
            return
        self.next_at = now + SAMPLE_S
        with self.proc.oneshot():
            row: dict[str, Any] = {
                "t": round(now - self.t0, 1), "rss_mb": self.proc.memory_info().rss / 2**20,
                "threads": self.proc.num_threads(), "fds": self.proc.num_fds(),
                "cpu_pct": self.proc.cpu_percent(None)}
        children = self.proc.children(recursive=True)
        row["children_rss_mb"] = sum(_rss(c) for c in children) / 2**20
        frames = {}
        for name, page in pages.items():
            try:
                frames[name] = decoded_frames(page)
            except Exception:  # noqa: BLE001 - a page mid-navigation has no frames to read
                frames[name] = None
        row["frames"] = frames
        self.samples.append(row)

    def health(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"pid": self.pid}
        if since is not None:
            query["at"] = {"$gte": since}
        return list(self.db["process_health"].find(query, {"_id": 0}).sort("at", 1))


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


def sleep_until(t: float, tick: Callable[[], None]) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        tick()
        time.sleep(min(1.0, left))


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             tick: Callable[[], None] = lambda: None) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        tick()
        time.sleep(0.5)


def window_median(samples: list[dict[str, Any]], key: str, lo: float, hi: float) -> float | None:
    vals = [s[key] for s in samples if lo <= s["t"] <= hi and s.get(key) is not None]
    return statistics.median(vals) if vals else None


def slope_per_min(samples: list[dict[str, Any]], key: str, lo: float, hi: float) -> float | None:
    pts = [(s["t"], s[key]) for s in samples if lo <= s["t"] <= hi]
    if len(pts) < 3:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in pts) / den * 60


def compact(doc: dict[str, Any], t0: float) -> dict[str, Any]:
    return {"t": round(doc["at"].timestamp() - t0, 1),
            **{k: doc.get(k) for k in ("rss_bytes", "threads", "tasks", "peer_connections",
                                       "peer_connections_open", "peer_connections_unregistered",
                                       "peer_connections_stalled", "legs", "fds",
                                       "loop_lag_ms", "gc_ms", "cpu_percent")}}


# What the first call starts for good (an idle app has not started them yet), so it may stay
# after everyone left without being a leak: one of each service, and the media loop's default
# executor, a ThreadPoolExecutor bounded at min(32, cpus + 4) whose idle threads are kept.
ALLOWED_TASKS = {"CallSupervisor._run": 1, "Sampler._run": 1}
ALLOWED_WHY = ("services started by the first call (supervisor, sampler, chat hub, metrics "
               "writer) and the asyncio default executor's threads (bounded, kept idle)")


def allowed_threads() -> dict[str, int]:
    import os

    return {"asyncio_#": min(32, (os.cpu_count() or 1) + 4), "chat-hub": 1,
            "metrics-writer_#": 1}


def unexplained(diff: dict[str, int], allowed: dict[str, int]) -> int:
    return sum(max(0, n - allowed.get(group, 0)) for group, n in diff.items())


def group_diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)
            if after.get(k, 0) != before.get(k, 0)}


def spread(docs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    vals = [d[key] for d in docs if d.get(key) is not None]
    if not vals:
        return {"min": None, "median": None, "max": None}
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


# -- the run ------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from videochat.backends.services import Services
    from videochat.bots.host import BotControl
    from videochat.settings import Settings

    state = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = {"VIDEOCHAT_CAPTURE": args.capture, "VIDEOCHAT_LOG_LEVEL": "INFO"}
    app = AppProcess(state, port=8624, env=env)
    log(f"starting the app (state {state})")
    app.start()
    assert app.proc is not None
    browser = Browser(None)  # we are inside the namespace already
    services: Any = None
    people = NAMES[: args.participants]
    pages: dict[str, Any] = {}
    steps_done: list[dict[str, Any]] = []
    out: dict[str, Any] = {"config": {**vars(args), "room": ROOM, "state_dir": str(state)}}
    probe: Probe | None = None
    try:
        lobby = browser.new_page(probe=False)  # wakes the runtime (its samplers) without joining
        lobby.goto(f"{app.url}/call")
        wait_for(lambda: EmbeddedServers(state).running(), 60, "the app's embedded servers")
        settings = dataclasses.replace(Settings.load(), state_dir=state)
        services = Services.from_settings(settings)
        grace = settings.reconnect_grace_s
        t0 = time.time()
        probe = Probe(app.proc.pid, services.db, t0)

        def tick() -> None:
            probe.tick(pages)

        wait_for(lambda: len(probe.health()) >= 3, 60, "3 process_health documents "
                 "(is ProcessHealth started in videochat/ui/state.py?)", tick)
        baseline = probe.health()[-1]
        log(f"idle baseline: rss {baseline['rss_bytes'] / 2**20:.0f} MB, threads "
            f"{baseline['threads']}, tasks {baseline['tasks']}, pcs {baseline['peer_connections']}")

        for name in people:
            page = browser.new_page()
            page.goto(f"{app.url}/call?room={ROOM}&name={name}&join=1")
            pages[name] = page
            wait_for(lambda p=page: p.get_by_role("button", name="Leave").count() > 0,
                     JOIN_TIMEOUT_S, f"{name} to join", tick)
            log(f"{name} joined")
        bots: list[str] = []
        if args.bots:
            control = BotControl(services.redis)
            if not control.wait_listener(30):
                raise RuntimeError("no app process listens for bot commands")
            for i in range(args.bots):
                reply = control.add(ROOM, f"bot{i + 1}", size=(320, 240))
                bots.append(str(reply.get("name")))
            log(f"bots joined: {bots}")
        for name, page in pages.items():
            wait_for(lambda p=page: decoded_frames(p) > 20, JOIN_TIMEOUT_S,
                     f"{name} to see remote video move", tick)
        t_call = time.time()
        log("media flows for everyone: the timeline starts")

        steps = plan(args.minutes, people, args.seed, grace)
        for step in steps:
            sleep_until(t_call + step["at_s"], tick)
            rec = dict(step, started_s=round(time.time() - t_call, 1))
            if step["kind"] == "rejoin":
                who = step["participant"]
                pages.pop(who).context.close()
                sleep_until(time.time() + step["duration_s"], tick)
                page = browser.new_page()
                page.goto(f"{app.url}/call?room={ROOM}&name={who}&join=1")
                pages[who] = page
                try:
                    wait_for(lambda p=page: decoded_frames(p) > 20, JOIN_TIMEOUT_S,
                             f"{who} back with video", tick)
                    rec["ok"], rec["detail"] = True, "rejoined"
                except RuntimeError as exc:
                    rec["ok"], rec["detail"] = False, str(exc)
            else:
                rec["ok"], rec["detail"] = faults_cli(state, cli_args(step))
            steps_done.append(rec)
            log(f"t={rec['started_s']:.0f} s {step['kind']} on {step['participant']}: "
                f"{'ok' if rec['ok'] else 'FAILED ' + rec['detail']}")
        t_end_call = t_call + args.minutes * 60
        sleep_until(t_end_call, tick)
        faults_cli(state, ["clear", "--room", ROOM])
        flowing_end = {n: decoded_frames(p) for n, p in pages.items()}
        time.sleep(3)
        flowing_end = {n: decoded_frames(p) - flowing_end[n] for n, p in pages.items()}

        # Everyone leaves: one by the button, the others by closing the tab, bots removed.
        t_leave = time.time()
        first = people[0]
        if first in pages:
            try:
                pages[first].get_by_role("button", name="Leave").click(timeout=10_000)
                time.sleep(2)
            except Exception as exc:  # noqa: BLE001 - closing the tab below leaves anyway
                log(f"{first}: Leave click failed ({exc}); closing the tab")
        for page in pages.values():
            page.context.close()
        pages.clear()
        if bots:
            BotControl(services.redis).clear(ROOM)
        log(f"everyone left; waiting {grace:.0f} s grace + {args.settle:.0f} s")
        sleep_until(t_leave + grace + args.settle, tick)
        # Leftovers are read from a sample with no connection object left or one that followed
        # a full GC (the sampler runs one when no leg is live): an unreachable connection in a
        # reference cycle is garbage, not a leak.
        since = datetime.fromtimestamp(t_leave + grace, UTC)

        def settled() -> list[dict[str, Any]]:
            return [d for d in probe.health(since)
                    if d.get("gc_ms") is not None or d.get("peer_connections") == 0]

        wait_for(lambda: bool(settled()), 100, "a process_health sample after a full GC", tick)
        final = settled()[-1]
        docs = probe.health()
        out.update(measure(args, probe, docs, baseline, final, t0, t_call, t_end_call, t_leave))
        out["steps"] = steps_done
        out["video_frames_in_last_3_s_before_leaving"] = flowing_end
        out["app_log_tail"] = app.log_tail(30).splitlines()
        return out
    except Exception as exc:  # noqa: BLE001 - a failed run still writes what it knows
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["steps"] = steps_done
        out["psutil_series"] = probe.samples if probe is not None else []
        with contextlib.suppress(Exception):
            out["health_series"] = ([compact(d, probe.t0) for d in probe.health()]
                                    if probe is not None else [])
        out["app_log_tail"] = app.log_tail(60).splitlines()
        return out
    finally:
        browser.close()
        if services is not None:
            services.close()
        app.stop()


def measure(args: argparse.Namespace, probe: Probe, docs: list[dict[str, Any]],
            baseline: dict[str, Any], final: dict[str, Any], t0: float, t_call: float,
            t_end_call: float, t_leave: float) -> dict[str, Any]:
    s = probe.samples
    warm_end = t_call - t0 + args.warmup_minutes * 60
    end = t_end_call - t0
    rss_warm = window_median(s, "rss_mb", warm_end - 60, warm_end)
    rss_end = window_median(s, "rss_mb", end - 60, end)
    growth = (None if rss_warm is None or rss_end is None
              else (rss_end - rss_warm) / rss_warm * 100)
    in_call = [d for d in docs if t_call <= d["at"].timestamp() <= t_end_call]
    leftover_pcs = (final.get("peer_connections") or 0) - (baseline.get("peer_connections") or 0)
    tasks_over = (final.get("tasks") or 0) - (baseline.get("tasks") or 0)
    threads_over = final["threads"] - baseline["threads"]
    task_diff = group_diff(final.get("task_groups") or {}, baseline.get("task_groups") or {})
    thread_diff = group_diff(final.get("thread_groups") or {}, baseline.get("thread_groups") or {})
    verdict = {
        "memory_growth_pct": None if growth is None else round(growth, 2),
        "leftover_peer_connections": leftover_pcs,
        "leftover_peer_connections_open": final.get("peer_connections_open"),
        "leftover_legs": final.get("legs"),
        "leftover_tasks_over_baseline": tasks_over,
        "leftover_threads_over_baseline": threads_over,
        "leftover_tasks_unexplained": unexplained(task_diff, ALLOWED_TASKS),
        "leftover_threads_unexplained": unexplained(thread_diff, allowed_threads()),
    }
    verdict["passed"] = (growth is not None and growth <= GROWTH_GOAL_PCT and leftover_pcs <= 0
                         and verdict["leftover_tasks_unexplained"] <= 0
                         and verdict["leftover_threads_unexplained"] <= 0
                         and not final.get("legs"))
    return {
        "verdict": verdict,
        "memory": {
            "rss_mb_at_warmup_end": rss_warm, "rss_mb_at_end": rss_end,
            "rss_mb_peak": max((x["rss_mb"] for x in s), default=None),
            "rss_mb_idle_baseline": baseline["rss_bytes"] / 2**20,
            "rss_mb_after_leaving": final["rss_bytes"] / 2**20,
            "slope_mb_per_min_after_warmup": slope_per_min(s, "rss_mb", warm_end, end),
            "children_rss_mb_at_warmup_end": window_median(s, "children_rss_mb",
                                                           warm_end - 60, warm_end),
            "children_rss_mb_at_end": window_median(s, "children_rss_mb", end - 60, end),
            "window": "median of the psutil samples in the last 60 s before each point",
        },
        "during_call": {k: spread(in_call, k) for k in (
            "threads", "tasks", "peer_connections", "peer_connections_open", "legs", "fds",
            "loop_lag_ms", "gc_ms", "cpu_percent")},
        "baseline": {k: baseline.get(k) for k in (
            "threads", "tasks", "peer_connections", "legs", "fds", "rss_bytes")},
        "after_leaving": {k: final.get(k) for k in (
            "threads", "tasks", "peer_connections", "peer_connections_open",
            "peer_connection_states", "peer_connections_unregistered",
            "peer_connections_stalled", "legs", "fds",
            "rss_bytes", "gc_ms")},
        "after_leaving_seconds": round(final["at"].timestamp() - t_leave, 1),
        "thread_groups_over_baseline": thread_diff,
        "task_groups_over_baseline": task_diff,
        "allowed_over_baseline": {"tasks": ALLOWED_TASKS, "threads": allowed_threads(),
                                  "why": ALLOWED_WHY},
        "task_groups_after_leaving": final.get("task_groups"),
        "timeline": {"call_started_s": round(t_call - t0, 1), "warmup_end_s": round(warm_end, 1),
                     "call_end_s": round(end, 1), "left_s": round(t_leave - t0, 1)},
        "health_series": [compact(d, t0) for d in docs],
        "psutil_series": s,
    }


def summary_line(out: dict[str, Any], path: Path) -> str:
    v = out.get("verdict") or {}
    m = out.get("memory") or {}
    dc = out.get("during_call") or {}

    def f(x: Any, nd: int = 1) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}"

    failed = sum(1 for s in out.get("steps", []) if not s.get("ok"))
    return (f"soak {out['config']['minutes']:g} min, {out['config']['participants']} browsers + "
            f"{out['config']['bots']} bots, {len(out.get('steps', []))} steps ({failed} failed): "
            f"RSS {f(m.get('rss_mb_at_warmup_end'))} -> {f(m.get('rss_mb_at_end'))} MB "
            f"(growth {f(v.get('memory_growth_pct'))} %, peak {f(m.get('rss_mb_peak'))} MB, "
            f"{f(m.get('slope_mb_per_min_after_warmup'), 2)} MB/min); in call max pcs "
            f"{(dc.get('peer_connections') or {}).get('max')}, tasks "
            f"{(dc.get('tasks') or {}).get('max')}, threads {(dc.get('threads') or {}).get('max')}"
            f"; left over: pcs {v.get('leftover_peer_connections')}, tasks "
            f"{v.get('leftover_tasks_over_baseline'):+} ({v.get('leftover_tasks_unexplained')} "
            f"unexplained), threads {v.get('leftover_threads_over_baseline'):+} "
            f"({v.get('leftover_threads_unexplained')} unexplained), legs "
            f"{v.get('leftover_legs')}{worst(out)} -> "
            f"{'PASSED' if v.get('passed') else 'FAILED'} "
            f"[embedded Valkey + SecantusDB] -> {path}")


def worst(out: dict[str, Any]) -> str:
    diff = out.get("task_groups_over_baseline") or {}
    extra = {g: n - ALLOWED_TASKS.get(g, 0) for g, n in diff.items()
             if n > ALLOWED_TASKS.get(g, 0)}
    if not extra:
        return ""
    group = max(extra, key=lambda g: extra[g])
    return f" (most: {extra[group]} x {group})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the faulted call")
    ap.add_argument("--participants", type=int, default=3, choices=[2, 3, 4])
    ap.add_argument("--bots", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--warmup-minutes", type=float, default=4.0,
                    help="memory growth is measured from the end of this (default 4)")
    ap.add_argument("--settle", type=float, default=40.0,
                    help="seconds to wait after the reconnect grace once everyone left "
                         "(default 40: a reaper of never-connected connections at 60 s "
                         "must get its turn)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--capture", default="320x240@15",
                    help="camera capture asked of the browsers (3-4 browsers on 2 cores)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")
    if not args.inside and netns_available():
        budget = args.minutes * 60 + 900
        with NetNamespace() as ns:
            log(f"network namespace {ns.name}: running the soak inside it")
            cmd = [*ns.prefix(), sys.executable, str(Path(__file__).resolve()), *sys.argv[1:],
                   "--inside"]
            try:
                code = subprocess.run(cmd, timeout=budget).returncode
            except subprocess.TimeoutExpired:
                log(f"the soak overran {budget:.0f} s; stopped")
                code = 3
        sys.exit(code)
    started = time.time()
    out = run(args)
    if "error" in out:
        path = write("soak", out)
        log(f"soak failed: {out['error']} -> {path}")
        sys.exit(2)
    out["wall_s"] = round(time.time() - started, 1)
    path = write("soak", out)
    print(summary_line(out, path), flush=True)
    sys.exit(0 if out["verdict"]["passed"] else 1)


if __name__ == "__main__":
    main()
