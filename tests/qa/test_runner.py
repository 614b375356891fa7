"""The QA runner: measurement plumbing (no browser), the command line, and one real scenario run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from videochat.events import CallEvent
from videochat.metrics.stats import MetricSample
from videochat.qa.assertions import FaultWindow
from videochat.qa.harness import CHROMIUM, PROJECT_ROOT, netns_available
from videochat.qa.measurements import (
    event_from_doc,
    expected_events_seen,
    fps_from_counts,
    missing_samples,
    reconnect_times_after_faults,
    series_from_samples,
    timeline_events,
    video_resumed_from_progress,
)

T0 = datetime(2026, 11, 26, 1, 0, 0, tzinfo=UTC)
BLACKOUT = FaultWindow("blackout", "alice", 6.0, 14.0)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def ev(kind: str, t: float, who: str = "alice", leg: str | None = "p1", **data: Any) -> CallEvent:
    return CallEvent(kind, "r", who, "c", leg, at(t), data)


# --- reconnect times ---------------------------------------------------------------------------

def test_reconnect_counts_from_the_end_of_the_fault_in_force() -> None:
    events = [ev("reconnect_started", 8.7), ev("reconnect_succeeded", 15.0, duration_s=6.3)]
    times, notes = reconnect_times_after_faults(events, [BLACKOUT], T0)
    assert times == {"alice": [1.0]}
    assert "drop to success 6.30 s" in notes[0]


def test_reconnect_outside_any_fault_counts_from_the_drop() -> None:
    events = [ev("reconnect_started", 20.0), ev("reconnect_succeeded", 21.5)]
    times, _ = reconnect_times_after_faults(events, [BLACKOUT], T0)
    assert times == {"alice": [1.5]}


def test_reconnect_of_someone_else_is_not_excused_by_alices_fault() -> None:
    events = [ev("reconnect_started", 8.0, who="bob"), ev("reconnect_succeeded", 15.0, who="bob")]
    times, _ = reconnect_times_after_faults(events, [BLACKOUT], T0)
    assert times == {"bob": [7.0]}


def test_reconnect_failed_or_unfinished_is_none() -> None:
    events = [ev("reconnect_started", 8.0), ev("reconnect_failed", 40.0),
              ev("reconnect_started", 50.0, leg="p2")]
    times, notes = reconnect_times_after_faults(events, [BLACKOUT], T0)
    assert times == {"alice": [None, None]}
    assert "failed" in notes[0]


def test_reconnect_outcome_without_its_start_uses_the_duration() -> None:
    times, _ = reconnect_times_after_faults([ev("reconnect_succeeded", 16.0, duration_s=7.0)],
                                            [BLACKOUT], T0)
    assert times == {"alice": [2.0]}  # dropped at 9.0, inside the blackout: counted from 14.0


# --- video resumed, from the browser probe -----------------------------------------------------

def frames(start: float, end: float, fps: float = 20.0) -> list[float]:
    n = int((end - start) * fps)
    return [T0.timestamp() + start + i / fps for i in range(n)]


def test_video_resumed_measures_from_fault_end_to_third_frame_after_the_gap() -> None:
    progress = {"alice": frames(0, 7) + frames(15.2, 30)}
    out = video_resumed_from_progress(progress, [BLACKOUT], T0.timestamp())
    assert out == {"blackout on alice": pytest.approx(1.3, abs=0.01)}


def test_a_short_hiccup_early_in_the_fault_is_not_taken_for_the_resume() -> None:
    progress = {"alice": frames(0, 6.2) + frames(6.9, 7.5) + frames(16.0, 30)}
    out = video_resumed_from_progress(progress, [BLACKOUT], T0.timestamp())
    assert out == {"blackout on alice": pytest.approx(2.1, abs=0.01)}


def test_video_that_never_stopped_resumed_at_zero() -> None:
    out = video_resumed_from_progress({"alice": frames(0, 30)}, [BLACKOUT], T0.timestamp())
    assert out == {"blackout on alice": 0.0}


def test_video_that_never_came_back_is_none() -> None:
    out = video_resumed_from_progress({"alice": frames(0, 7)}, [BLACKOUT], T0.timestamp())
    assert out == {"blackout on alice": None}


def test_kill_window_has_no_length_and_a_later_stop_still_counts() -> None:
    kill = FaultWindow("kill", "alice", 6.0, 6.0)
    progress = {"alice": frames(0, 6.3) + frames(8.0, 20)}
    out = video_resumed_from_progress(progress, [kill], T0.timestamp())
    assert out == {"kill on alice": pytest.approx(2.1, abs=0.01)}


def test_fps_from_counts_uses_frame_totals_and_survives_a_new_video() -> None:
    base = T0.timestamp() * 1000
    # one iframe: 20 frames/s for 3 s polled every 200 ms, then a new <video> counting from 0
    first = {base + i * 200: i * 4 for i in range(16)}            # 0..60 frames over 0-3 s
    second = {base + 3000 + i * 200: i * 2 for i in range(1, 11)}  # 10 fps for 2 s, from 0
    series = fps_from_counts({"f1": {**first, **second}}, T0.timestamp(), 5, "alice")
    assert [s.value for s in series] == [20.0, 20.0, 20.0, 10.0, 10.0]
    assert [s.t_s for s in series] == [1.0, 2.0, 3.0, 4.0, 5.0]
    two = fps_from_counts({"a": first, "b": first}, T0.timestamp(), 3, "bob", tiles=2)
    assert [s.value for s in two] == [20.0, 20.0, 20.0]


# --- samples -----------------------------------------------------------------------------------

def sample(t: float, leg: str = "L1", direction: str = "subscribe", kind: str = "video",
           **kw: Any) -> MetricSample:
    return MetricSample(at=at(t), room="r", call_id="c", participant="alice", leg=leg,
                        direction=direction, kind=kind, **kw)  # type: ignore[arg-type]


def test_series_from_samples_keeps_video_legs_and_subscriber_rtt() -> None:
    samples = [sample(1, fps=20, rtt_ms=12.0, quality="720p30"),
               sample(1, leg="L2", direction="publish", fps=18, rtt_ms=99.0),
               sample(1, kind="audio", rtt_ms=5.0)]
    fps, rtt, quality = series_from_samples(samples, T0)
    assert [(s.series, s.value) for s in fps] == [("alice subscribe L1", 20.0),
                                                   ("alice publish L2", 18.0)]
    assert [s.value for s in rtt] == [12.0]
    assert len(quality) == 1 and quality[0].value >= 0


def test_missing_samples_counts_holes_but_not_during_media_faults() -> None:
    samples = [sample(t) for t in (0, 1, 2, 4, 5)] + [sample(t) for t in range(20, 25)]
    assert missing_samples(samples) == 1 + 14
    # 3 is a hole; 6..19 lie in the blackout (6-14) plus its settling (3 s) -> only 18, 19 count
    assert missing_samples(samples, [BLACKOUT], T0) == 1 + 2
    mongo = FaultWindow("mongo_outage", "room", 6.0, 14.0)
    assert missing_samples(samples, [mongo], T0) == 15  # a backend outage excuses nothing


# --- events ------------------------------------------------------------------------------------

def test_expected_events_wait_for_fault_starts_and_reconnect_outcomes() -> None:
    started = [ev("fault_started", 6.0), ev("reconnect_started", 8.0)]
    assert not expected_events_seen(started, injected=1)
    assert expected_events_seen([*started, ev("reconnect_succeeded", 15.0)], injected=1)
    assert not expected_events_seen([ev("reconnect_succeeded", 15.0)], injected=1)


def test_timeline_events_describe_what_happened() -> None:
    events = [ev("fault_started", 6.0, fault_kind="blackout"),
              ev("quality_changed", 7.0, from_level="720p30", to_level="480p30"),
              ev("reconnect_succeeded", 15.0, duration_s=6.3), ev("leg_connected", 15.0)]
    out = timeline_events(events, T0)
    assert [(e.t_s, e.kind, e.detail) for e in out] == [
        (6.0, "fault_started", "blackout"), (7.0, "quality_changed", "720p30 → 480p30"),
        (15.0, "reconnect_succeeded", "6.3 s")]


def test_events_read_back_from_mongodb(mongo_db: Any) -> None:
    from videochat.metrics.store import MetricsStore

    store = MetricsStore(mongo_db)
    store.emit(CallEvent("reconnect_succeeded", "room-x", "alice", "c1", "leg1", at(15.0),
                         {"duration_s": 6.3}))
    assert store.flush(10)
    store.close()
    (doc,) = list(mongo_db["events"].find({"room": "room-x"}))
    e = event_from_doc(doc)
    assert (e.kind, e.participant, e.leg, e.data["duration_s"]) == (
        "reconnect_succeeded", "alice", "leg1", 6.3)
    assert abs((e.at - at(15.0)).total_seconds()) < 0.01


# --- command line ------------------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "videochat", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_qa_list_prints_one_scenario_a_line_name_first() -> None:
    out = run_cli("qa", "list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert len(names) >= 8 and "blackout-8s" in names and "kill-connection" in names


def test_qa_run_unknown_or_invalid_scenario_exits_2(tmp_path: Path) -> None:
    out = run_cli("qa", "run", "no-such-scenario")
    assert out.returncode == 2 and "no scenario 'no-such-scenario'" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nduration_s = 10\n\n[[participants]]\nname = "a"\n'
                   'kind = "robot"\n\n[assertions]\nmin_fps = 10\n')
    out = run_cli("qa", "run", str(bad))
    assert out.returncode == 2
    assert "line 6, participants[0].kind" in out.stderr


# --- a real run (the must-show) --------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_blackout_scenario_passes_with_a_measured_reconnect_time(tmp_path: Path) -> None:
    if not (CHROMIUM.exists() and netns_available()):
        if os.environ.get("CI"):
            pytest.fail("browser stack missing (chromium, root, iproute2)")
        pytest.skip("browser stack missing (chromium, root, iproute2)")
    report = tmp_path / "r.json"
    started = time.monotonic()
    out = run_cli("qa", "run", "blackout-8s", "--report", str(report),
                  "--app-state", str(tmp_path / "state"), "--port", "8617", timeout=300)
    took = time.monotonic() - started
    print(out.stdout[-3000:], out.stderr[-3000:], f"wall {took:.1f} s", sep="\n")
    doc = json.loads(report.read_text())
    assert out.returncode == 0, doc.get("error") or doc["assertions"]
    assert doc["passed"] is True
    (reconnect,) = [a for a in doc["assertions"] if a["name"] == "reconnect_time_max_s"]
    assert reconnect["passed"] and 0 <= reconnect["measured"] <= 3
    assert doc["measurements"]["reconnect_times_s"]["alice"][0] == reconnect["measured"]
    assert [f["kind"] for f in doc["timings"]["faults"]] == ["blackout"]
    assert (tmp_path / "r.html").stat().st_size > 100_000  # plotly inline


# --- the /qa page ------------------------------------------------------------------------------

def qa_page() -> None:  # run as a script by AppTest: imports inside
    from videochat.ui import state

    state.get_settings.clear()
    state.get_services.clear()
    from videochat.ui.qa import render

    render()


@pytest.fixture
def page_env(monkeypatch: pytest.MonkeyPatch, valkey_server: Any, secantus_server: Any,
             mongo_db: Any, tmp_path: Path) -> Any:
    monkeypatch.setenv("REDIS_URL", valkey_server.url)
    monkeypatch.setenv("MONGODB_URI", secantus_server.url)
    monkeypatch.setenv("VIDEOCHAT_DB", mongo_db.name)
    monkeypatch.setenv("VIDEOCHAT_STATE_DIR", str(tmp_path / "state"))
    return mongo_db


def stored_run(db: Any, passed: bool) -> str:
    from videochat.qa.assertions import RunMeasurements, evaluate
    from videochat.qa.report import RunResult, RunStore
    from videochat.qa.scenario import find_scenario

    scenario = find_scenario("blackout-8s")
    m = RunMeasurements(fault_windows=[BLACKOUT], reconnect_times_s={"alice": [1.2]},
                        video_resumed_s={"blackout on alice": 0.8 if passed else None})
    m.fps = []
    result = RunResult("20261126T010000-abcdef", scenario, "qa-room", T0, at(40), m,
                       evaluate(scenario.assertions, m))
    return RunStore(db).save(result)


def test_qa_page_lists_scenarios_and_opens_a_past_run(page_env: Any) -> None:
    from streamlit.testing.v1 import AppTest

    run_id = stored_run(page_env, passed=False)
    at_ = AppTest.from_function(qa_page, default_timeout=30)
    at_.run()
    assert not at_.exception, at_.exception
    options = at_.selectbox[0].options
    assert "blackout-8s" in " ".join(options) and len(options) >= 8
    assert at_.selectbox[1].value == run_id
    errors = " ".join(e.value for e in at_.error)
    assert "blackout-8s: FAILED" in errors
    assert [d for d in at_.dataframe]  # verdict and history tables
    assert len(at_.get("download_button")) == 2


def test_qa_page_needs_the_admin_token_outside_dev_mode(
    page_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VIDEOCHAT_DEV_MODE", "false")
    monkeypatch.setenv("VIDEOCHAT_ADMIN_TOKEN", "s3cret-token-123")
    at_ = AppTest.from_function(qa_page, default_timeout=30)
    at_.run()
    assert "needs the admin token" in at_.error[0].value
    assert len(at_.selectbox) == 0
    at_.text_input[0].set_value("s3cret-token-123").run()
    assert not at_.error and len(at_.selectbox) >= 1
