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
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videochat.backends.embedded import EmbeddedServers
from videochat.bots.host import BotControl
from videochat.call.quality import LADDER
from videochat.events import CallEvent
from videochat.exceptions import VideoChatError
from videochat.faults.kinds import BACKEND_KINDS
from videochat.metrics.stats import MetricSample
from videochat.qa.assertions import (
    ChatLedger,
    FaultWindow,
    RunMeasurements,
    Sample,
    TimelineEvent,
    evaluate,
    fault_episodes,
    fault_windows_from_events,
    quality_times_from_events,
)
from videochat.qa.report import RunResult, RunStore, new_run_id, save_report
from videochat.qa.scenario import Scenario
from videochat.settings import Settings

if TYPE_CHECKING:  # imported when a run connects: `qa list` stays light
    from videochat.backends.services import Services

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0
COLLECT_TIMEOUT_S = 20.0
GAP_S = 0.5
STOP_LOOKAHEAD_S = 5.0
RESUME_FRAMES = 3
EVENTS = "events"
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
    for (const v of document.querySelectorAll('video')) {
      if (!v.muted && v.getVideoPlaybackQuality) n += v.getVideoPlaybackQuality().totalVideoFrames;
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
TIMELINE_KINDS = frozenset({
    "participant_joined", "participant_left", "reconnect_started", "reconnect_succeeded",
    "reconnect_failed", "fault_started", "fault_ended", "quality_changed", "backend_down",
    "backend_up",
})


class RunError(VideoChatError, RuntimeError):
    """The run itself could not be carried out (not a failed objective)."""


# ---------------------------------------------------------------------------------------------
# pure measurement steps (unit-tested without a browser)


def event_from_doc(doc: dict[str, Any]) -> CallEvent:
    at = doc["at"]
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return CallEvent(kind=doc["kind"], room=doc["room"], participant=doc.get("participant"),
                     call_id=doc.get("call_id"), leg=doc.get("leg"), at=at,
                     data=dict(doc.get("data") or {}))


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
    samples = list(samples)
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
        if s.kind == "video":
            seconds[s.leg].add(int(s.at.timestamp()))
    lost = 0
    for secs in seconds.values():
        for sec in range(min(secs), max(secs) + 1):
            if sec not in secs and not any(a <= sec <= b for a, b in excused):
                lost += 1
    return lost


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
        deadline = time.monotonic() + s.duration_s + JOIN_TIMEOUT_S + COLLECT_TIMEOUT_S + 90
        url = self.options.app_url or self._start_app()
        browser = self._browser()
        who = _Participants()
        self._join_browsers(browser, url, who)
        services = self._services or self._connect()
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
        app = AppProcess(state, port=port, env={"VIDEOCHAT_LOG_LEVEL": "INFO"})
        self.say(f"starting the app on {app.url} (state {state})")
        app.start()
        self._stack.callback(app.stop)
        return app.url

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
        if self.scenario.timeline:
            self._stack.callback(lambda: _quietly(control.clear, self.room))
            if any(step.kind in BACKEND_KINDS for step in self.scenario.timeline):
                self._stack.callback(lambda: _quietly(control.clear, None))
        for step in sorted(self.scenario.timeline, key=lambda st: st.at_s):
            _sleep_until(t0_wall + step.at_s, self._poll_progress)
            fid = control.inject(step.to_command(self.room))
            t = time.time() - t0_wall
            self.injected.append((t, fid, f"{step.kind} on {step.target}"))
            self.say(f"t={t:.1f} s: {step.kind} on {step.target} ({fid})")
        _sleep_until(t0_wall + self.scenario.duration_s, self._poll_progress)
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
        in_run = [e for e in events if t0 - timedelta(seconds=1) <= e.at <= end]
        windows = fault_windows_from_events(in_run, t0)
        if len(windows) < len(self.injected):
            self.notes.append(f"{len(self.injected)} faults injected, {len(windows)} reported "
                              "by the app; planned windows used for the rest")
            seen = {w.start_s for w in windows}
            for (t, _fid, _label), step in zip(
                    self.injected, sorted(self.scenario.timeline, key=lambda st: st.at_s),
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
        if who.pages:
            if not any(x.value > 0 for x in fps):
                self.notes.append("the app's samples give 0 fps on every leg; frame rates are "
                                  "the browsers' received frames (remote-video probe)")
                fps = []
            tiles = max(1, len(self.scenario.participants) - 1)
            for name in who.pages:
                fps += fps_from_counts(self._counts[name], t0_wall, self.scenario.duration_s,
                                       f"{name} received (browser)", tiles)
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
        )
        if who.bots:
            m.fps = [*(m.fps or []), *self._bot_fps(services, t0_wall)]
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


# ---------------------------------------------------------------------------------------------
# chat traffic


class ChatLoad:
    """Sends the scenario's chat messages through the app's chat path (ChatQueue: Redis Streams,
    persisted to MongoDB by the app's persister) from a thread; one ChatHub per receiver reads
    the room as a participant's page would."""

    def __init__(self, services: Services, settings: Settings, room: str, scenario: Scenario,
                 names: list[str]) -> None:
        from videochat.chat.hub import ChatHub
        from videochat.chat.queue import ChatQueue

        assert scenario.chat is not None
        self.services = services
        self.room = room
        self.rate = scenario.chat.messages_per_second
        self.senders = list(scenario.chat.senders) or names
        self.names = names
        self.sent: dict[str, str] = {}
        self.refused = 0
        self.queue = ChatQueue.from_settings(services.redis, services.db, settings)
        self.hubs = {name: ChatHub(services.redis, services.db) for name in names}
        for hub in self.hubs.values():
            hub.messages(room)  # start reading now, as an open page does
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="qa-chat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            sender = self.senders[n % len(self.senders)]
            try:
                msg = self.queue.send(self.room, f"qa-{sender}", sender, f"qa message {n}",
                                      message_id=uuid.uuid4().hex)
                self.sent[msg.id] = sender
            except VideoChatError as exc:  # refused by the app: reported, not a lost message
                self.refused += 1
                logger.warning("chat message %d refused: %s", n, exc)
            n += 1
            next_at += 1.0 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def ledger(self, timeout_s: float = 15.0) -> ChatLedger:
        from videochat.chat.ledger import COLLECTION
        from videochat.qa.assertions import chat_ledger

        self.queue.wait_persisted(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            delivered = {name: [m.id for m in hub.messages(self.room) if m.id in self.sent]
                         for name, hub in self.hubs.items()}
            stored = [str(d["_id"]) for d in self.services.db[COLLECTION].find(
                {"room": self.room}, {"_id": 1})]
            ledger = chat_ledger(self.sent, delivered, stored)
            if ledger.lost == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for hub in self.hubs.values():
            with contextlib.suppress(Exception):
                hub.close()
        with contextlib.suppress(Exception):
            self.queue.close()
        return ledger


def run_scenario(scenario: Scenario, options: RunOptions, *, settings: Settings | None = None,
                 source: str | None = None) -> RunResult:
    return ScenarioRun(scenario, options, settings=settings, source=source).execute()


# ---------------------------------------------------------------------------------------------
# background runs (the /qa page)


@dataclass
class BackgroundRun:
    """A `qa run` subprocess started for the /qa page; its progress lines go to `log`."""

    scenario: str
    room: str | None
    report: Path
    log: Path
    proc: Any
    started_at: float = field(default_factory=time.time)

    @property
    def returncode(self) -> int | None:
        code: int | None = self.proc.poll()
        return code

    @property
    def running(self) -> bool:
        return self.returncode is None

    def progress(self, lines: int = 40) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.startswith(("[", "  ", "error"))][-lines:]

    def report_doc(self) -> dict[str, Any] | None:
        import json

        try:
            doc: dict[str, Any] = json.loads(self.report.read_text())
            return doc
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()


def launch_run(scenario: str, *, app_url: str, state_dir: Path, reports_dir: Path,
               room: str | None = None) -> BackgroundRun:
    """Start `python -m videochat qa run` against a running app, in the background."""
    import subprocess
    import sys

    from videochat.qa.harness import PROJECT_ROOT

    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}-{scenario[:40]}"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    report, log = reports_dir / f"{stem}.json", reports_dir / f"{stem}.log"
    cmd = [sys.executable, "-m", "videochat", "qa", "run", scenario, "--report", str(report),
           "--app-url", app_url, "--state-dir", str(state_dir)]
    if room:
        cmd += ["--room", room]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    logger.info("QA run of %s started (pid %d), report %s", scenario, proc.pid, report)
    return BackgroundRun(scenario, room, report, log, proc)
