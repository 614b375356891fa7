"""Runs a scenario against the real app: participants join, faults hit on schedule, a verdict.

One run, in order: reach the app (the one given, or one started here on the embedded servers
of its own state folder), open a headless Chromium page per "browser" participant and ask the
app (through Redis, `videochat.bots.host`) for each "bot"; wait until every browser shows moving
remote video; that instant is t = 0. Then each fault step is sent at its time through the fault
control plane, chat traffic (if any) runs alongside, and after `duration_s` the measurements are
read back: events and per-second samples from MongoDB (polled until the metrics flusher has
written what the run expects, bounded), and when each browser's remote video moved, recorded
by the probe in every page (`harness.PROGRESS_JS`). Everything started is stopped again.

Who must run where: the app's embedded Valkey and SecantusDB listen on the loopback of wherever
the app runs. When this process starts the app inside a fresh network namespace, it must itself
run inside that namespace (`videochat.qa.cli` re-executes itself there), so the clients built
here reach them.

Measured how (why these definitions):

* reconnect time: per `reconnect_started` → `reconnect_succeeded` episode, counted from the later
  of the drop and the end of the fault in force at the drop. During a blackout nothing can
  reconnect; what an objective like "reconnects within 3 s" means is once the path is back.
  The raw drop → success durations are kept in the report's notes.
* video resumed: per fault, per browser page, the longest gap of ≥ `GAP_S` in remote-frame
  progress that begins during the fault (or up to `STOP_LOOKAHEAD_S` after it) and the time of
  the third new frame after that gap; measured from the fault's end (0 if it never stopped).
* fps / RTT / quality level: the app's per-second samples of video legs (RTT only on subscribe
  legs, the only direction aiortc measures it).
* metrics lost: per video leg, seconds missing between its first and last stored sample (the
  sampler writes one per second; a hole is a sample taken and never stored, or never taken).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videochat.backends import keys
from videochat.backends.embedded import EmbeddedServers
from videochat.bots.host import BotControl
from videochat.call.quality import LADDER
from videochat.events import CallEvent
from videochat.exceptions import VideoChatError
from videochat.faults.kinds import BACKEND_KINDS
from videochat.metrics.stats import MetricSample
from videochat.qa.assertions import (
    FaultWindow,
    RunMeasurements,
    Sample,
    evaluate,
    fault_windows_from_events,
    quality_times_from_events,
)
from videochat.qa.chat_load import ChatLoad
from videochat.qa.measurements import (
    bot_fps_series,
    browser_measurements,
    event_from_doc,
    expected_events_seen,
    fps_from_counts,
    missing_samples,
    reconnect_times_after_faults,
    series_from_samples,
    timeline_events,
    video_back_after_restarts,
    video_resumed_from_progress,
)
from videochat.qa.report import RunResult, RunStore, new_run_id, save_report
from videochat.qa.scenario import AppRestartStep, Scenario
from videochat.settings import Settings

if TYPE_CHECKING:  # imported when a run connects: `qa list` stays light
    from videochat.backends.services import Services

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0
RESTART_BUDGET_S = 120.0  # one app_restart: the old process's exit, the new one's start-up
COLLECT_TIMEOUT_S = 20.0
EVENTS = keys.EVENTS
BOT_SIZE = (320, 240)
"""QA bots send 320x240: on this 2-core machine a 640x480 bot (4.3 ms to draw and 5.5 ms to
encode per frame, both on the media loop) competes with the very call being measured."""

# Init script for every frame of a participant's page: the remote videos' decoded-frame total
# every 200 ms, so frame rates are counted, not inferred from how often a timer saw progress
# (timers slow down on a loaded machine; frame counters do not).
FRAME_COUNT_JS = """
(() => {
  if (window.__vcFcInstalled) return;
  window.__vcFcInstalled = true;
  window.__vcFcId = Math.random().toString(36).slice(2);
  window.__vcFc = [];
  setInterval(() => {
    let n = 0;
    for (const v of document.querySelectorAll('video[data-vc="remote"]')) {
      if (!v.paused && v.getVideoPlaybackQuality) n += v.getVideoPlaybackQuality().totalVideoFrames;
    }
    window.__vcFc.push([Date.now(), n]);
    if (window.__vcFc.length > 20000) window.__vcFc.shift();
  }, 200);
})();
"""
COLLECT_COUNTS_JS = """
() => {
  const out = [];
  for (const f of document.querySelectorAll('iframe')) {
    try {
      const w = f.contentWindow;
      if (w.__vcFc) out.push([w.__vcFcId, w.__vcFc.slice()]);
    } catch (e) {}
  }
  return out;
}
"""
class RunError(VideoChatError, RuntimeError):
    """The run itself could not be carried out (not a failed objective)."""


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class RunOptions:
    report: Path | None = None
    room: str | None = None
    app_url: str | None = None
    """Use this running app; None: start one here (state in `state_dir`)."""
    state_dir: Path | None = None
    """The app's state folder (servers.json of its embedded servers)."""
    port: int = 8599
    store: bool = True
    progress: Callable[[str], None] = field(default=lambda msg: None)


@dataclass
class _Participants:
    pages: dict[str, Any] = field(default_factory=dict)
    bots: list[str] = field(default_factory=list)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise RunError(f"timed out after {timeout:.0f} s waiting for {what}")


class ScenarioRun:
    """One run of one scenario; `execute()` always cleans up and always returns a RunResult."""

    def __init__(self, scenario: Scenario, options: RunOptions, *,
                 settings: Settings | None = None, source: str | None = None) -> None:
        self.scenario = scenario
        self.options = options
        self.base_settings = settings or Settings.load()
        self.source = source
        self.run_id = new_run_id()
        self.room = options.room or scenario.room_for_run(self.run_id)
        self.notes: list[str] = []
        self.started_at = datetime.now(UTC)
        self.t0: datetime | None = None
        self.injected: list[tuple[float, str, str]] = []  # (t, fault id, label)
        self._services: Services | None = None
        self._stack = contextlib.ExitStack()
        # Remote-frame times per page, polled during the run: a rebuilt call mounts new
        # iframes, and the old ones' records go with them.
        self._progress: dict[str, set[float]] = defaultdict(set)
        self._counts: dict[str, dict[str, dict[float, int]]] = defaultdict(
            lambda: defaultdict(dict))
        self._pages: dict[str, Any] = {}
        self._app: Any = None  # the AppProcess this run started, if any
        self._boots: dict[str, str] | None = None  # the app's boot ids (videochat.qa.run_status)
        self.restarts: list[tuple[str, float]] = []  # (label, wall time the app was healthy)
        # Every stored sample of the run, as collected: benchmarks read figures the objectives
        # do not (bench/bandwidth.py: the rung and delivery held, audio concealment).
        self.samples: list[MetricSample] = []

    def say(self, msg: str) -> None:
        logger.info("%s", msg)
        self.options.progress(msg)

    # -- lifecycle -----------------------------------------------------------------------
    def execute(self) -> RunResult:
        error: str | None = None
        measurements = RunMeasurements()
        result: RunResult | None = None
        try:
            with self._stack:
                try:
                    measurements = self._run()
                except Exception as exc:  # noqa: BLE001 - a run error is reported, never raised
                    logger.exception("QA run %s failed", self.run_id)
                    error = f"{type(exc).__name__}: {exc}"
                # Saved before cleanup: the run history goes to the app's MongoDB, which may be
                # one of the servers this run started and is about to stop.
                result = self._result(measurements, error)
                self._save(result)
        except Exception as exc:  # noqa: BLE001 - cleanup trouble is reported too
            logger.exception("QA run %s: cleanup failed", self.run_id)
            if result is None:
                result = self._result(measurements, f"{type(exc).__name__}: {exc}")
                self._save(result)
            else:
                result.notes.append(f"cleanup failed: {exc}")
        self._close_services()
        return result

    def _result(self, measurements: RunMeasurements, error: str | None) -> RunResult:
        results = evaluate(self.scenario.assertions, measurements)
        return RunResult(self.run_id, self.scenario, self.room, self.t0 or self.started_at,
                         datetime.now(UTC), measurements, results, error=error,
                         source=self.source, notes=self.notes)

    def _save(self, result: RunResult) -> None:
        report = self.options.report or (self.state_dir() / "qa-reports" / f"{self.run_id}.json")
        json_path, html_path = save_report(result, report)
        self.say(f"report: {json_path} ({html_path.name})")
        if not self.options.store:
            return
        try:
            services = self._services or self._connect()
            RunStore(services.db).save(result, json_path=json_path.resolve(),
                                       html_path=html_path.resolve())
        except Exception as exc:  # noqa: BLE001 - history is a convenience; the report is written
            logger.warning("run %s not stored in MongoDB: %s", self.run_id, exc)
            self.notes.append(f"not stored in the run history: {exc}")

    def _close_services(self) -> None:
        if self._services is not None:
            with contextlib.suppress(Exception):
                self._services.close()
            self._services = None

    def state_dir(self) -> Path:
        return self.options.state_dir or self.base_settings.state_dir

    def _connect(self) -> Services:
        from videochat.backends.services import Services

        state = self.state_dir()
        if self.base_settings.embedded_redis or self.base_settings.embedded_mongo:
            _wait(lambda: EmbeddedServers(state).running(), 60,
                  f"the app's embedded servers in {state}")
        settings = replace(self.base_settings, state_dir=state)
        self._services = Services.from_settings(settings)
        self._stack.callback(self._close_services)
        return self._services

    # -- the steps -----------------------------------------------------------------------
    def _run(self) -> RunMeasurements:
        s = self.scenario
        if s.restart_steps and self.options.app_url:
            raise RunError("app_restart steps restart the app the runner starts itself: run "
                           "without --app-url")
        deadline = (time.monotonic() + s.duration_s + JOIN_TIMEOUT_S + COLLECT_TIMEOUT_S + 90
                    + RESTART_BUDGET_S * len(s.restart_steps))
        url = self.options.app_url or self._start_app()
        browser = self._browser()
        who = _Participants()
        self._join_browsers(browser, url, who)
        services = self._services or self._connect()
        self._mark_running(services)
        self._add_bots(services, who)
        self._wait_media(who)
        t0_wall = time.time()
        self.t0 = datetime.fromtimestamp(t0_wall, UTC)
        self.say(f"t=0: media flows for {len(who.pages)} browser(s), {len(who.bots)} bot(s)")
        chat = self._start_chat(services, who) if s.chat else None
        self._pages = who.pages
        self._timeline(services, t0_wall)
        if chat is not None:
            chat.stop()
        if time.monotonic() > deadline:
            raise RunError("the run overran its time budget")
        return self._collect(services, who, t0_wall, chat)

    def _start_app(self) -> str:
        from videochat.backends.embedded import free_port, port_open
        from videochat.qa.harness import AppProcess

        state = self.state_dir()
        # Outside a namespace the usual port may be taken by someone's app.
        port = free_port() if port_open(self.options.port) else self.options.port
        env = {"VIDEOCHAT_LOG_LEVEL": "INFO"}
        if self.scenario.restart_steps:
            env["VIDEOCHAT_HANDOVER_S"] = "30"  # restarted as in production (a deploy)
        app = AppProcess(state, port=port, env=env)
        self.say(f"starting the app on {app.url} (state {state})")
        app.start()
        self._stack.callback(app.stop)
        self._app = app
        return app.url

    def _mark_running(self, services: Services) -> None:
        """The run is in the history from its start, as running: if the app restarts under it
        and this process dies too, the next app marks it failed (`run_status`)."""
        from videochat.qa import run_status

        try:
            self._boots = run_status.boots(services.redis)
        except Exception as exc:  # noqa: BLE001 - without them a restart is noticed later
            logger.warning("the app's boot ids not read: %s", exc)
        if not self.options.store:
            return
        try:
            RunStore(services.db).save(self._result(RunMeasurements(), "running"))
            run_status.mark_running(services.db, self.run_id)
        except Exception as exc:  # noqa: BLE001 - history is a convenience
            logger.warning("run %s not marked running: %s", self.run_id, exc)

    def _tick(self) -> None:
        self._check_app()
        self._poll_progress()

    def _check_app(self) -> None:
        """A restart of the app this run did not cause ends the run with the reason."""
        from videochat.qa import run_status

        if self._boots is None or self._services is None:
            return
        try:
            now = run_status.boots(self._services.redis)
        except Exception:  # noqa: BLE001 - Redis away (an outage step): next tick
            return
        again = run_status.restarted(self._boots, now)
        if again:
            t = time.time() - self.t0.timestamp() if self.t0 else 0.0
            raise RunError(f"{run_status.APP_RESTARTED} (t={t:.1f} s; node "
                           f"{', '.join(again)} started again)")

    def _restart_app(self, step: AppRestartStep, t0_wall: float) -> None:
        from videochat.qa import run_status

        if self._app is None:
            raise RunError("app_restart: this run did not start the app")
        t = time.time() - t0_wall
        self.say(f"t={t:.1f} s: app_restart ({step.mode})")
        exited = self._app.restart(step.mode)
        healthy_at = time.time()
        self.restarts.append((step.label, healthy_at))
        self.say(f"t={healthy_at - t0_wall:.1f} s: the old app exited in {exited:.1f} s; the "
                 "new one answers its health check")
        services = self._services
        if services is not None and self._boots is not None:
            before = self._boots

            def booted() -> bool:
                with contextlib.suppress(Exception):
                    return bool(run_status.restarted(before, run_status.boots(services.redis)))
                return False

            # This restart is ours: its new boot id becomes the one to watch.
            _wait(booted, RESTART_BUDGET_S, "the restarted app to start its runtime")
            self._boots = run_status.boots(services.redis)

    def _browser(self) -> Any:
        from videochat.qa.harness import Browser

        # Already inside the run's namespace (or on the host): Chromium runs right here.
        browser = Browser(None)
        self._stack.callback(browser.close)
        return browser

    def _join_browsers(self, browser: Any, url: str, who: _Participants) -> None:
        people = [p for p in self.scenario.participants if p.kind == "browser"]
        if not people:
            # Nobody opens the call page: one page wakes the app's runtime (bot plane, faults).
            page = browser.new_page(probe=False)
            page.goto(f"{url}/call")
            self._stack.callback(page.context.close)
        for p in people:
            page = browser.new_page()
            page.context.add_init_script(FRAME_COUNT_JS)
            page.goto(f"{url}/call?room={self.room}&name={p.name}&join=1")
            self._stack.callback(page.context.close)
            who.pages[p.name] = page
            self.say(f"{p.name} (browser) opened the call page")
        if people:
            first = who.pages[people[0].name]
            _wait(lambda: first.get_by_role("button", name="Leave").count() > 0,
                  JOIN_TIMEOUT_S, f"{people[0].name} to join")

    def _add_bots(self, services: Services, who: _Participants) -> None:
        bots = [p for p in self.scenario.participants if p.kind == "bot"]
        if not bots:
            return
        control = BotControl(services.redis)
        if not control.wait_listener(30):
            raise RunError("no app process listens for bot commands (is the bot plane wired?)")
        self._stack.callback(lambda: control.clear(self.room))
        for p in bots:
            reply = control.add(self.room, p.name, size=BOT_SIZE)
            who.bots.append(str(reply.get("name", p.name)))
            self.say(f"{p.name} (bot) joined")

    def _wait_media(self, who: _Participants) -> None:
        from videochat.qa.harness import decoded_frames

        expected = len(self.scenario.participants) - 1
        for name, page in who.pages.items():
            if expected < 1:
                continue
            _wait(_frames_above(page, 0), JOIN_TIMEOUT_S, f"{name} to see remote video")
            _wait(_frames_above(page, decoded_frames(page) + 10), JOIN_TIMEOUT_S,
                  f"{name}'s remote video to move")
        if not who.pages:
            time.sleep(2.0)  # bots deliver from their first frame; give the relay a moment

    def _timeline(self, services: Services, t0_wall: float) -> None:
        from videochat.faults.control import control_from_services

        control = control_from_services(services, by=f"qa:{self.run_id}")
        if self.scenario.fault_steps:
            self._stack.callback(lambda: _quietly(control.clear, self.room))
            if any(step.kind in BACKEND_KINDS for step in self.scenario.fault_steps):
                self._stack.callback(lambda: _quietly(control.clear, None))
        for step in sorted(self.scenario.timeline, key=lambda st: st.at_s):
            _sleep_until(t0_wall + step.at_s, self._tick)
            if isinstance(step, AppRestartStep):
                self._restart_app(step, t0_wall)
                continue
            fid = control.inject(step.to_command(self.room))
            t = time.time() - t0_wall
            self.injected.append((t, fid, f"{step.kind} on {step.target}"))
            self.say(f"t={t:.1f} s: {step.kind} on {step.target} ({fid})")
        _sleep_until(t0_wall + self.scenario.duration_s, self._tick)
        self.say(f"t={self.scenario.duration_s:g} s: end of the timeline")

    def _bot_fps(self, services: Services, t0_wall: float) -> list[Sample]:
        """Frames per second each bot received through the relay, per publisher; the relay's
        bot-to-bot latency goes to the notes."""
        try:
            stats = BotControl(services.redis).stats(self.room)
        except VideoChatError as exc:
            self.notes.append(f"bot reception not read: {exc}")
            return []
        latency = stats.get("latency") or {}
        if latency.get("p50_ms") is not None:
            self.notes.append(
                f"relay latency bot to bot (stamp to relay output, no encoder/network): "
                f"p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms over "
                f"{latency['frames_seen']} frames, {latency['frames_missing']} missing")
        out = []
        for bot, received in (stats.get("bots") or {}).items():
            for publisher, rec in received.items():
                per_second = {int(k): int(v) for k, v in (rec.get("per_second") or {}).items()}
                out += bot_fps_series(per_second, t0_wall, self.scenario.duration_s,
                                      f"{publisher}→{bot} (bot)")
        return out

    def _poll_progress(self) -> None:
        from videochat.qa.harness import progress_times

        for name, page in self._pages.items():
            try:
                self._progress[name].update(progress_times(page))
                for frame_id, points in page.evaluate(COLLECT_COUNTS_JS):
                    self._counts[name][frame_id].update((float(t), int(n)) for t, n in points)
            except Exception as exc:  # noqa: BLE001 - a page mid-reload answers next time
                logger.debug("progress of %s not read: %s", name, exc)

    def _start_chat(self, services: Services, who: _Participants) -> ChatLoad:
        chat = ChatLoad(services, self.base_settings, self.room, self.scenario,
                           [p.name for p in self.scenario.participants])
        chat.start()
        return chat

    def _collect(self, services: Services, who: _Participants, t0_wall: float,
                 chat: ChatLoad | None) -> RunMeasurements:
        from videochat.metrics.diagnostics import iter_samples

        assert self.t0 is not None
        t0 = self.t0
        end = t0 + timedelta(seconds=self.scenario.duration_s)
        self._poll_progress()
        progress = {name: sorted(times) for name, times in self._progress.items()}
        db = services.db
        query = {"room": self.room, "at": {"$gte": t0 - timedelta(seconds=30),
                                             "$lte": end + timedelta(seconds=60)}}
        events: list[CallEvent] = []
        samples: list[MetricSample] = []
        deadline = time.monotonic() + COLLECT_TIMEOUT_S
        while True:
            events = [event_from_doc(d) for d in db[EVENTS].find(query).sort("at", 1)]
            samples = list(iter_samples(db, self.room, t0, end))
            have_tail = any(s.at >= end - timedelta(seconds=3) for s in samples)
            if (expected_events_seen(events, len(self.injected))
                    and (have_tail or not who.pages)):
                break
            if time.monotonic() > deadline:
                self.notes.append("the metrics flusher had not written every expected event or "
                                  f"sample {COLLECT_TIMEOUT_S:g} s after the run")
                break
            time.sleep(0.5)
        self.samples = samples
        in_run = [e for e in events if t0 - timedelta(seconds=1) <= e.at <= end]
        windows = fault_windows_from_events(in_run, t0)
        if len(windows) < len(self.injected):
            self.notes.append(f"{len(self.injected)} faults injected, {len(windows)} reported "
                              "by the app; planned windows used for the rest")
            seen = {w.start_s for w in windows}
            for (t, _fid, _label), step in zip(
                    self.injected, sorted(self.scenario.fault_steps, key=lambda st: st.at_s),
                    strict=False):
                if not any(abs(t - s) < 1.0 for s in seen):
                    windows.append(FaultWindow(step.kind, step.target, t, t + step.duration_s))
            windows.sort(key=lambda w: w.start_s)
        reconnects, notes = reconnect_times_after_faults(in_run, windows, t0)
        self.notes.extend(notes)
        levels = [q.name for q in LADDER]
        downs, backs = quality_times_from_events(in_run, t0, windows, levels,
                                                 run_end_s=self.scenario.duration_s)
        fps, rtt, quality = series_from_samples(samples, t0)
        received, freezes = browser_measurements(samples, t0)
        reported = {x.series.split(" ", 1)[0] for x in received}
        if who.pages:
            if not any(x.value > 0 for x in fps):
                self.notes.append("the app's samples give 0 fps on every leg; frame rates are "
                                  "the browsers' received frames (remote-video probe)")
                fps = []
            tiles = max(1, len(self.scenario.participants) - 1)
            for name in who.pages:
                probe = fps_from_counts(self._counts[name], t0_wall, self.scenario.duration_s,
                                        f"{name} received (browser)", tiles)
                fps += probe
                if name not in reported:  # no stats from that page: its probe, then
                    received += probe
        m = RunMeasurements(
            fault_windows=windows,
            reconnect_times_s=reconnects,
            quality_step_down_s=downs,
            back_to_full_quality_s=backs,
            fps=fps,
            rtt_ms=rtt,
            quality_level=quality,
            video_resumed_s=(video_resumed_from_progress(progress, windows, t0_wall)
                             if who.pages else None),
            metrics_lost=missing_samples(samples, windows, t0) if samples else None,
            events=timeline_events(in_run, t0),
            video_back_s=(video_back_after_restarts(progress, self.restarts)
                          if who.pages and self.restarts else None),
            received_fps=received,
            freezes=freezes,
        )
        if who.bots:
            bots = self._bot_fps(services, t0_wall)
            m.fps = [*(m.fps or []), *bots]
            m.received_fps = [*received, *bots]
        if chat is not None:
            m.chat = chat.ledger()
        self.say(f"collected {len(in_run)} events, {len(samples)} samples")
        return m


def _frames_above(page: Any, n: int) -> Callable[[], bool]:
    from videochat.qa.harness import decoded_frames

    return lambda: decoded_frames(page) > n


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - cleanup must go on
        logger.warning("cleanup step %s failed: %s", getattr(fn, "__name__", fn), exc)


def _sleep_until(wall: float, tick: Callable[[], None] | None = None) -> None:
    """Sleep until a wall-clock instant, calling `tick` about twice a second meanwhile (never
    when it could make us late)."""
    while (left := wall - time.time()) > 0:
        if tick is not None and left > 0.8:
            tick()
            left = wall - time.time()
        time.sleep(max(0.0, min(left, 0.5)))


def run_scenario(scenario: Scenario, options: RunOptions, *, settings: Settings | None = None,
                 source: str | None = None) -> RunResult:
    return ScenarioRun(scenario, options, settings=settings, source=source).execute()
