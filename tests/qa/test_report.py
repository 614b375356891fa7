"""QA verdicts from measurements, the JSON + HTML report, and run history on real SecantusDB."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from videochat.events import CallEvent
from videochat.exceptions import BackendUnavailable, NotFound
from videochat.qa import (
    ChatLedger,
    FaultWindow,
    RunMeasurements,
    RunResult,
    RunStore,
    Sample,
    evaluate,
    new_run_id,
    save_report,
)
from videochat.qa.assertions import (
    TimelineEvent,
    all_passed,
    chat_ledger,
    fault_episodes,
    fault_windows_from_events,
    quality_times_from_events,
    reconnect_times_from_events,
    video_resumed_from_samples,
)
from videochat.qa.report import render_html
from videochat.qa.scenario import Assertions, Scenario, find_scenario, parse_scenario

BLACKOUT = FaultWindow("blackout", "alice", 6.0, 14.0)


def samples(series: str, values: dict[float, float]) -> list[Sample]:
    return [Sample(t, series, v) for t, v in values.items()]


def healthy_fps() -> list[Sample]:
    # 20 fps except during the blackout (0) and a slow ramp just after it (inside settle_s).
    out = []
    for leg in ("alice→bot1", "bot1→alice"):
        for t in range(0, 30):
            v = 0.0 if 6 <= t <= 14 else (8.0 if 15 <= t <= 17 else 20.0)
            out.append(Sample(float(t), leg, v))
    return out


def full_measurements() -> RunMeasurements:
    return RunMeasurements(
        fault_windows=[BLACKOUT],
        reconnect_times_s={"alice": [1.8], "bot1": []},
        quality_step_down_s=[1.2],
        back_to_full_quality_s=[7.5],
        chat=ChatLedger(sent=50, delivered=50, persisted=50, duplicates=0),
        fps=healthy_fps(),
        rtt_ms=samples("alice→bot1", {float(t): 40.0 + t for t in range(30)}),
        video_resumed_s={"blackout on alice": 2.1},
        metrics_lost=0,
        quality_level=samples("bot1→alice", {0.0: 5, 7.0: 2, 20.0: 5}),
        events=[TimelineEvent(14.2, "reconnect_started", "alice"),
                TimelineEvent(16.0, "reconnect_succeeded", "alice", "1.80 s")],
    )


ALL = Assertions(
    reconnect_time_max_s=3, quality_step_down_max_s=2, back_to_full_quality_max_s=10,
    chat_lost_max=0, chat_duplicated_max=0, min_fps=15, max_rtt_ms=150,
    video_resumed_after_fault_max_s=3, metrics_lost_max=0,
)


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


# ---------------------------------------------------------------------------------------------
# assertions


def test_every_objective_passes_on_good_measurements() -> None:
    results = evaluate(ALL, full_measurements())
    assert [r.name for r in results] == list(ALL.given())
    assert all(r.passed for r in results), [r.detail for r in results if not r.passed]
    r = by_name(results)
    assert r["reconnect_time_max_s"].measured == 1.8
    assert r["min_fps"].measured == 20.0  # blackout, ramp (inside settle) and warm-up left out
    assert r["max_rtt_ms"].measured == pytest.approx(40 + 28, abs=1)  # p95 of 40..69, no fault
    assert r["chat_lost_max"].measured == 0
    assert "sent 50" in r["chat_lost_max"].detail
    assert all_passed(results)


def test_missing_measurements_fail_with_a_reason_never_pass() -> None:
    results = evaluate(ALL, RunMeasurements(fault_windows=[BLACKOUT]))
    assert len(results) == 9
    for r in results:
        assert not r.passed and r.measured is None
        assert r.detail.startswith("not measured"), r
    assert not all_passed(results)
    assert not all_passed([])  # no objective at all is no pass either


def test_empty_measurements_fail_where_the_fault_should_have_produced_one() -> None:
    m = full_measurements()
    m.reconnect_times_s = {"alice": []}
    m.quality_step_down_s = []
    m.video_resumed_s = {}
    m.fps = [Sample(8.0, "alice→bot1", 0.0)]  # only during the fault
    r = by_name(evaluate(ALL, m))
    assert "no reconnect was observed" in r["reconnect_time_max_s"].detail
    assert "no fault was measured" in r["quality_step_down_max_s"].detail
    assert "no fault was measured" in r["video_resumed_after_fault_max_s"].detail
    assert "no samples outside faults" in r["min_fps"].detail
    assert not any(r[k].passed for k in ("reconnect_time_max_s", "quality_step_down_max_s",
                                          "video_resumed_after_fault_max_s", "min_fps"))


def test_never_completed_fails_and_names_who() -> None:
    m = full_measurements()
    m.reconnect_times_s = {"alice": [1.0, None]}
    m.back_to_full_quality_s = [None]
    m.video_resumed_s = {"blackout on alice": None}
    r = by_name(evaluate(ALL, m))
    assert r["reconnect_time_max_s"].detail == "reconnect never completed for: alice"
    assert "quality never returned to full after: blackout on alice" in (
        r["back_to_full_quality_max_s"].detail)
    assert "video never resumed after: blackout on alice" in (
        r["video_resumed_after_fault_max_s"].detail)


def test_thresholds_exceeded_fail_with_the_worst_value() -> None:
    m = full_measurements()
    m.reconnect_times_s = {"alice": [1.0, 4.25], "bot1": [2.0]}
    m.chat = ChatLedger(sent=100, delivered=99, persisted=100, duplicates=2)
    m.metrics_lost = 3
    m.fps = (m.fps or []) + [Sample(t, "slow→leg", 12.0) for t in range(20, 30)]
    m.rtt_ms = samples("alice→bot1", {float(t): 300.0 for t in range(20, 30)})
    r = by_name(evaluate(ALL, m))
    assert r["reconnect_time_max_s"].measured == 4.25 and not r["reconnect_time_max_s"].passed
    assert "worst: alice" in r["reconnect_time_max_s"].detail
    assert r["chat_lost_max"].measured == 1 and not r["chat_lost_max"].passed
    assert r["chat_duplicated_max"].measured == 2 and not r["chat_duplicated_max"].passed
    assert r["metrics_lost_max"].measured == 3 and not r["metrics_lost_max"].passed
    assert r["min_fps"].measured == 12.0 and "lowest: slow→leg" in r["min_fps"].detail
    assert not r["min_fps"].passed
    assert r["max_rtt_ms"].measured == 300.0 and not r["max_rtt_ms"].passed


def test_value_exactly_at_the_threshold_passes() -> None:
    m = full_measurements()
    m.reconnect_times_s = {"alice": [3.0]}
    (r,) = evaluate(Assertions(reconnect_time_max_s=3), m)
    assert r.passed and r.measured == 3.0


def test_settle_and_warmup_windows_are_configurable() -> None:
    m = full_measurements()
    (strict,) = evaluate(Assertions(min_fps=15), m, settle_s=0.0)
    assert strict.measured == 8.0 and not strict.passed  # the ramp after the fault now counts
    m.fps = [Sample(0.0, "a", 1.0)] + [Sample(t, "a", 20.0) for t in (1.0, 2.0, 3.0)]
    m.fault_windows = []
    (warm,) = evaluate(Assertions(min_fps=15), m, warmup_s=0.5)
    assert warm.measured == 20.0
    (cold,) = evaluate(Assertions(min_fps=15), m, warmup_s=0.0)
    assert cold.measured == pytest.approx(6.7)  # p10 of 1, 20, 20, 20: the warm-up sample counts
    assert not cold.passed


# ---------------------------------------------------------------------------------------------
# reports


def make_result(scenario: Scenario, m: RunMeasurements | None = None,
                error: str | None = None) -> RunResult:
    m = m or full_measurements()
    started = datetime(2026, 11, 26, 0, 45, tzinfo=UTC)
    return RunResult(
        run_id=new_run_id(started), scenario=scenario, room="qa-room", started_at=started,
        ended_at=started + timedelta(seconds=30.5), measurements=m,
        results=evaluate(scenario.assertions, m), error=error,
    )


def test_json_report_holds_verdicts_timings_and_series(tmp_path: Path) -> None:
    result = make_result(find_scenario("blackout-8s"))
    json_path, html_path = save_report(result, tmp_path / "out" / "r.json")
    assert json_path == tmp_path / "out" / "r.json" and html_path == tmp_path / "out" / "r.html"
    doc = json.loads(json_path.read_text())
    assert doc["passed"] is True
    assert doc["scenario"]["name"] == "blackout-8s"
    assert doc["scenario"]["definition"]["timeline"][0]["kind"] == "blackout"
    assert doc["timings"]["duration_s"] == 30.5
    assert doc["timings"]["started_at"].startswith("2026-11-26T00:45:00")
    assert doc["timings"]["faults"] == [
        {"kind": "blackout", "target": "alice", "start_s": 6.0, "end_s": 14.0}]
    reconnect = next(a for a in doc["assertions"] if a["name"] == "reconnect_time_max_s")
    assert reconnect == {"name": "reconnect_time_max_s", "measured": 1.8, "threshold": 3.0,
                         "passed": True, "detail": reconnect["detail"], "unit": "s"}
    assert doc["series"]["fps"][0] == [0.0, "alice→bot1", 20.0]
    assert doc["html_report"] == "r.html"
    assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", doc["run_id"])


def test_failed_or_errored_run_says_passed_false(tmp_path: Path) -> None:
    m = full_measurements()
    m.reconnect_times_s = {"alice": [9.0]}
    json_path, _ = save_report(make_result(find_scenario("blackout-8s"), m), tmp_path / "f.json")
    assert json.loads(json_path.read_text())["passed"] is False
    errored = make_result(find_scenario("blackout-8s"), error="app did not start in 60 s")
    assert all(r.passed for r in errored.results) and not errored.passed
    json_path, html_path = save_report(errored, tmp_path / "e.json")
    assert json.loads(json_path.read_text())["error"] == "app did not start in 60 s"
    assert "Run error: app did not start in 60 s" in html_path.read_text()


def test_html_report_embeds_plotly_once_with_fault_bands_and_verdicts(tmp_path: Path) -> None:
    scenario = find_scenario("blackout-8s")
    _, html_path = save_report(make_result(scenario), tmp_path / "r.json")
    page = html_path.read_text()
    assert page.count("plotly.js v") == 1  # the library inline, once, for offline viewing
    assert not re.search(r"<script[^>]+src=", page)
    assert page.count("Plotly.newPlot") == 4  # timeline, fps, rtt, quality
    # The fault band is a shaded rectangle from 6 s to 14 s on the charts.
    assert re.search(r'"type":"rect"[^}]*"x0":6\.0[^}]*"x1":14\.0', page) or re.search(
        r'"x0":6\.0,"x1":14\.0', page)
    assert "blackout on alice" in page
    assert page.count("class='pass'>PASS") == len(scenario.assertions.given())
    assert "PASSED" in page


def test_html_escapes_text_and_notes_missing_charts(tmp_path: Path) -> None:
    scenario = parse_scenario(
        'name = "x"\ndescription = "<script>alert(1)</script>"\nduration_s = 10\n'
        '[[participants]]\nname = "a"\nkind = "bot"\n[assertions]\nmin_fps = 10\n'
    )
    result = make_result(scenario, RunMeasurements())
    _, html_path = save_report(result, tmp_path / "x.json")
    page = html_path.read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "No samples for “Frames per second (per leg)”" in page
    assert "class='fail'>FAIL" in page and "FAILED" in page


# ---------------------------------------------------------------------------------------------
# run history on SecantusDB


def test_run_store_saves_lists_and_gets(mongo_db: Any, tmp_path: Path) -> None:
    store = RunStore(mongo_db)
    store.ensure_indexes()
    older = make_result(find_scenario("blackout-8s"))
    newer = make_result(find_scenario("kill-connection"))
    newer.started_at += timedelta(minutes=5)
    newer.ended_at += timedelta(minutes=5)
    json_path, html_path = save_report(older, tmp_path / "older.json")
    assert store.save(older, json_path=json_path, html_path=html_path) == older.run_id
    store.save(newer)
    store.save(newer)  # saving again replaces, never duplicates

    runs = store.list()
    assert [r["run_id"] for r in runs] == [newer.run_id, older.run_id]
    assert "series" not in runs[0] and "definition" not in runs[0]["scenario"]
    assert runs[1]["report_html"] == str(html_path)
    assert [r["run_id"] for r in store.list(scenario="blackout-8s")] == [older.run_id]
    assert store.list(limit=1)[0]["run_id"] == newer.run_id

    doc = store.get(older.run_id)
    assert doc["passed"] is True and doc["series"]["fps"]
    assert "Plotly.newPlot" in render_html(doc)  # a stored run renders again without its files
    with pytest.raises(NotFound):
        store.get("no-such-run")


def test_run_store_reports_an_unreachable_database() -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        "mongodb://127.0.0.1:9/", serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    store = RunStore(client["nowhere"])
    with pytest.raises(BackendUnavailable, match="cannot store QA run"):
        store.save(make_result(find_scenario("blackout-8s")))
    with pytest.raises(BackendUnavailable, match="cannot read"):
        store.list()
    client.close()


# ---------------------------------------------------------------------------------------------
# measurements derived from call events and samples

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
LEVELS = ["720p30", "480p30", "360p24", "240p15", "180p10", "audio-only"]


def ev(t: float, kind: str, participant: str | None = None, leg: str | None = None,
       **data: Any) -> CallEvent:
    return CallEvent(kind=kind, room="r", participant=participant, leg=leg,
                     at=T0 + timedelta(seconds=t), data=data)


def test_fault_windows_pair_start_and_end_across_processes() -> None:
    events = [
        ev(5.0, "fault_started", "alice", fault_id="f1", fault_kind="loss"),
        ev(5.1, "fault_started", "alice", fault_id="f1", fault_kind="loss"),  # a 2nd process
        ev(5.0, "fault_started", "alice", fault_id="f2", fault_kind="latency"),
        ev(15.0, "fault_ended", "alice", fault_id="f1"),
        ev(15.2, "fault_ended", "alice", fault_id="f1"),
        ev(15.0, "fault_ended", "alice", fault_id="f2"),
        ev(20.0, "fault_started", None, fault_id="f3", fault_kind="kill"),
        ev(21.0, "reconnect_started", "alice"),
    ]
    windows = fault_windows_from_events(events, T0)
    assert windows == [FaultWindow("latency", "alice", 5.0, 15.0),
                       FaultWindow("loss", "alice", 5.0, 15.2),
                       FaultWindow("kill", "room", 20.0, 20.0)]
    assert fault_episodes(windows) == [FaultWindow("latency+loss", "alice", 5.0, 15.2),
                                       FaultWindow("kill", "room", 20.0, 20.0)]


def test_reconnect_times_from_events() -> None:
    events = [
        ev(14.5, "reconnect_started", "alice", "alice/publish"),
        ev(14.6, "reconnect_started", "alice", "alice/subscribe"),
        ev(16.2, "reconnect_succeeded", "alice", "alice/publish", duration_s=1.7),
        ev(30.0, "reconnect_started", "bob", "bob/publish"),
        ev(50.0, "reconnect_failed", "bob", "bob/publish", duration_s=20.0),
        ev(51.0, "reconnect_succeeded", "carol", "carol/publish", duration_s=0.9),
    ]
    assert reconnect_times_from_events(events) == {
        "alice": [1.7, None],  # the subscribe leg never reported back
        "bob": [None], "carol": [0.9],
    }
    assert reconnect_times_from_events([]) == {}


def test_quality_step_down_and_back_to_full() -> None:
    windows = [FaultWindow("loss", "alice", 10.0, 20.0), FaultWindow("loss", "alice", 40.0, 50.0),
               FaultWindow("blackout", "alice", 60.0, 68.0)]
    events = [
        ev(2.0, "quality_changed", "bob", "bob<-alice", from_level="480p30", to_level="720p30"),
        ev(11.4, "quality_changed", "bob", "bob<-alice", from_level="720p30", to_level="480p30"),
        ev(12.6, "quality_changed", "bob", "bob<-alice", from_level="480p30", to_level="360p24"),
        ev(12.0, "quality_changed", "alice", "alice<-bob", from_level="480p30",
           to_level="360p24"),
        ev(26.0, "quality_changed", "bob", "bob<-alice", from_level="360p24", to_level="480p30"),
        ev(29.5, "quality_changed", "bob", "bob<-alice", from_level="480p30", to_level="720p30"),
        ev(27.0, "quality_changed", "alice", "alice<-bob", from_level="360p24",
           to_level="480p30"),
        ev(41.0, "quality_changed", "bob", "bob<-alice", from_level="720p30", to_level="480p30"),
    ]
    downs, backs = quality_times_from_events(events, T0, windows, LEVELS)
    # First episode: bob's leg stepped down 1.4 s in; full again (720p) 9.5 s after the end;
    # alice's leg was at 480p before (its first change), back at 480p after 7 s.
    # Second: down after 1 s, never back up. The blackout is not a network-quality fault.
    assert downs == [1.4, 1.0]
    assert backs == [9.5, None]
    assert quality_times_from_events([], T0, windows[:1], LEVELS) == ([None], [0.0])


def test_video_resumed_from_fps_samples() -> None:
    windows = [FaultWindow("blackout", "alice", 6.0, 14.0), FaultWindow("kill", "alice", 20, 20),
               FaultWindow("latency", "bob", 30, 32)]
    # Leg a: blacked out, back 2 s after; killed at 20, its samples show it at 21-22, back at 23.
    fps = [Sample(float(t), "a", 0.0 if 6 <= t <= 15 or 21 <= t <= 22 else 20.0)
           for t in range(40)]
    fps += [Sample(float(t), "b", 0.0 if 6 <= t <= 16 else 18.0) for t in range(40)]
    assert video_resumed_from_samples(fps, windows) == {
        "blackout on alice": 3.0, "kill on alice": 3.0, "latency on bob": 0.0}
    stuck = fps + [Sample(float(t), "c", 20.0 if t < 8 else 0.0) for t in range(40)]
    resumed = video_resumed_from_samples(stuck, windows)
    assert resumed["blackout on alice"] is None
    assert resumed["latency on bob"] == 0.0  # leg c was stopped long before this fault


def test_chat_ledger_from_message_ids() -> None:
    sent = {"m1": "alice", "m2": "alice", "m3": "bob", "m4": "bob"}
    delivered = {
        "alice": ["m3", "m4", "m4"],        # m4 twice: a duplicate
        "bob": ["m1", "m2"],
        "carol": ["m1", "m3", "m4"],        # carol missed m2
    }
    ledger = chat_ledger(sent, delivered, persisted=["m1", "m2", "m3", "m4", "m1"])
    assert ledger == ChatLedger(sent=4, delivered=3, persisted=4, duplicates=2)
    assert ledger.lost == 1
