"""What people saw: browser freezes, jitter buffer, concealment, the experience score, and the
charts of a call with both ends measured (real SecantusDB through the MetricsStore)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from videochat.events import CallEvent
from videochat.metrics.diagnostics import (
    Selection,
    build_figures,
    compute_kpis,
    query_events,
    query_samples,
)
from videochat.metrics.experience import freezes, mos_like
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import MetricsStore

Db = Database[dict[str, Any]]
T0 = datetime(2026, 4, 1, 9, 0, 0, tzinfo=UTC)
SECONDS = 40


def legs_of(who: str, others: list[str]) -> list[tuple[str, str]]:
    """(leg, direction): publish, one receiving leg per other person, and the warm spare."""
    out = [(f"{who}:pub", "publish")]
    out += [(f"{who}:sub{i}", "subscribe") for i in range(len(others) + 1)]
    return out


def fill(db: Db, people: list[str], *, browsers: set[str], stop_at: dict[str, int] | None = None,
         room: str = "r") -> None:
    store = MetricsStore(db, flush_interval_s=0.1)
    stop_at = stop_at or {}
    for who in people:
        others = [p for p in people if p != who]
        for leg, direction in legs_of(who, others):
            spare = leg.endswith(f"sub{len(others)}")
            for i in range(SECONDS):
                at = T0 + timedelta(seconds=i)
                store.record(MetricSample(
                    at=at, room=room, call_id="c", participant=who, leg=leg,
                    direction=direction, kind="video",  # type: ignore[arg-type]
                    bitrate_in_kbps=600.0 if direction == "publish" else 5.0,
                    bitrate_out_kbps=5.0 if direction == "publish" else (1 if spare else 550.0),
                    rtt_ms=None if direction == "publish" else 40.0, loss_fraction=0.0,
                    jitter_ms=5.0, fps=0.0 if spare or i < 3 else 20.0))
                if who not in browsers or i >= stop_at.get(who, SECONDS):
                    continue
                if spare:  # the warm spare's page: no frames, and all of no audio concealed
                    store.record(MetricSample(
                        at=at, room=room, call_id="c", participant=who, leg=f"{leg}@browser",
                        direction=direction, kind="video", source="browser",  # type: ignore[arg-type]
                        fps=0.0, freeze_count=0, freeze_s=0.0, concealed_pct=100.0))
                    continue
                # One 0.6 s freeze ends at 20 s, a 1.2 s one at 30 s (cumulative counters).
                fc = (i >= 20) + (i >= 30)
                fz = 0.6 * (i >= 20) + 1.2 * (i >= 30)
                store.record(MetricSample(
                    at=at, room=room, call_id="c", participant=who, leg=f"{leg}@browser",
                    direction=direction, kind="video", source="browser",  # type: ignore[arg-type]
                    bitrate_in_kbps=540.0 if direction == "subscribe" else None,
                    bitrate_out_kbps=610.0 if direction == "publish" else None,
                    rtt_ms=42.0, loss_fraction=0.01, jitter_ms=6.0,
                    fps=0.0 if i < 4 else 19.0,
                    freeze_count=fc if direction == "subscribe" else None,
                    freeze_s=fz if direction == "subscribe" else None,
                    jitter_buffer_ms=80.0 if direction == "subscribe" else None,
                    concealed_pct=2.0 if direction == "subscribe" else None))
    for n, who in enumerate(people):
        store.emit(CallEvent("participant_joined", room, participant=who, call_id="c",
                             at=T0 + timedelta(seconds=n)))
    store.emit(CallEvent("fault_started", room, participant="bob", at=T0 + timedelta(seconds=15),
                         data={"fault_id": "f1", "fault_kind": "loss",
                               "params": {"percent": 20.0, "direction": "both"},
                               "direction": "both"}))
    store.emit(CallEvent("fault_ended", room, participant="bob", at=T0 + timedelta(seconds=35),
                         data={"fault_id": "f1", "fault_kind": "loss"}))
    assert store.close(30)


def whole(room: str = "r") -> Selection:
    return Selection(room=room, start=T0, end=T0 + timedelta(seconds=SECONDS))


def test_freezes_count_across_a_rebuilt_connection() -> None:
    def row(s: int, fc: int, fz: float) -> dict[str, Any]:
        return {"t": T0 + timedelta(seconds=s), "fc": fc, "fz": fz}

    rows = [row(0, 0, 0), row(5, 1, 0.5), row(6, 1, 0.5), row(9, 0, 0.0), row(10, 2, 1.5)]
    assert freezes(rows) == (3, 2.0, 0.75)  # 1 + (reset) 2; the longest: 1.5 s over 2 freezes
    # A leg already running when the range starts counts from its first value there.
    assert freezes([row(0, 4, 3.0), row(1, 5, 3.9)], T0) == (1, pytest.approx(0.9),
                                                             pytest.approx(0.9))


def test_mos_like_score() -> None:
    assert mos_like(None, 1, 0) is None
    good = mos_like(40, 5, 0)
    assert good is not None and 4.3 <= good <= 4.5
    lossy = mos_like(40, 5, 0.2)
    assert lossy is not None and lossy < good - 1
    frozen = mos_like(40, 5, 0, frozen_fraction=0.1)
    assert frozen == pytest.approx(good - 0.4)
    assert mos_like(3000, 500, 0.9) == 1.0


def test_two_person_call_end_to_end(mongo_db: Db) -> None:
    fill(mongo_db, ["ana", "bob"], browsers={"ana", "bob"})
    s = whole()
    series = query_samples(mongo_db, s)
    events = query_events(mongo_db, s)
    figs = build_figures(series, events, s)
    for name, fig in figs.items():
        legend = [t.name for t in fig.data if t.showlegend is not False]
        assert len(legend) <= 4, (name, legend)
    bitrate = figs["bitrate"]
    assert sorted(t.name for t in bitrate.data if t.showlegend) == [
        "ana receives", "ana sends", "bob receives", "bob sends"]
    # Each direction end to end: ana's page sent, the server received; bob's page received.
    hovers = " ".join(t.hovertemplate for t in bitrate.data)
    assert "ana sends · page · leg ana:pub@browser" in hovers
    assert "ana sends · server · leg ana:pub" in hovers
    assert "bob receives · page · leg bob:sub0@browser" in hovers
    assert figs["freezes"].layout.annotations == ()
    # The warm spare (bound to nobody) is left out of the charts and the figures.
    assert not any("sub1" in t.hovertemplate for t in figs["concealed"].data)
    assert {t.name for t in figs["jitter_buffer"].data} == {"ana receives", "bob receives"}
    band = next(sh for sh in bitrate.layout.shapes if sh.type == "rect")
    assert band.label.text == "loss 20% on bob"
    kpis = compute_kpis(series, events, s.end)
    # Nobody emitted first_frame_received: taken from the samples (bob joined at 1 s, ana's
    # page first showed frames at 4 s; bob's too).
    assert kpis.time_to_first_frame_s == pytest.approx(3.0, abs=0.01)
    by = {e.participant: e for e in kpis.experiences}
    for who in ("ana", "bob"):
        e = by[who]
        assert e.browser_data and e.freeze_count == 2 and e.freeze_s == pytest.approx(1.8)
        assert e.longest_freeze_s == pytest.approx(1.2)
        assert e.jitter_buffer_ms == pytest.approx(80.0) and e.concealed_pct == pytest.approx(2)
        assert e.score is not None and 3.5 < e.score < 4.5
    assert kpis.experience_score == pytest.approx(by["ana"].score)


def test_a_page_that_stopped_reporting_is_no_browser_data(mongo_db: Db) -> None:
    fill(mongo_db, ["ana", "bob"], browsers={"ana", "bob"}, stop_at={"bob": 10})
    s = whole()
    series = query_samples(mongo_db, s)
    figs = build_figures(series, query_events(mongo_db, s), s)
    (note,) = figs["jitter_buffer"].layout.annotations
    assert note.text == "no browser data: bob"
    # The stop leaves a gap, never a line drawn to zero.
    bob = next(t for t in figs["jitter_buffer"].data if t.name == "bob receives")
    assert all(v == 80.0 for v in bob.y if v == v)


def test_no_browser_at_all_gives_no_browser_data_not_zeros(mongo_db: Db) -> None:
    fill(mongo_db, ["ana", "bob"], browsers=set())
    s = whole()
    kpis = compute_kpis(query_samples(mongo_db, s), query_events(mongo_db, s), s.end)
    for e in kpis.experiences:
        assert not e.browser_data and e.freeze_count is None and e.jitter_buffer_ms is None
        assert e.text(e.freeze_count, "d") == "no browser data"
        assert e.score is not None  # from the server's RTT and loss


def test_small_multiples_beyond_two_participants(mongo_db: Db) -> None:
    fill(mongo_db, ["ana", "bob", "cy"], browsers={"ana", "bob", "cy"})
    s = whole()
    series = query_samples(mongo_db, s)
    figs = build_figures(series, query_events(mongo_db, s), s)
    fps = figs["fps"]
    axes = {t.yaxis for t in fps.data}
    assert axes == {"y", "y2", "y3"}  # one row per participant
    assert [fps.layout[f"yaxis{n}"].title.text for n in ("", "2", "3")] == ["ana", "bob", "cy"]
    assert len([t for t in fps.data if t.showlegend]) == 6  # 3 people x sends/receives


def test_html_report_of_any_call(mongo_db: Db) -> None:
    from videochat.exceptions import NotFound
    from videochat.qa.report import call_report

    fill(mongo_db, ["ana", "bob"], browsers={"ana"}, room="rep")
    report = call_report(mongo_db, "rep", "c")
    page = report.html()
    assert page.startswith("<!DOCTYPE html>") and page.count("plotly.js v") == 1
    assert "Video frozen (browser, cumulative)" in page and "Events" in page
    assert "<tr><td>ana</td><td>2</td><td>1.80</td><td>1.20</td><td>80.0</td>" in page
    assert "<tr><td>bob</td><td>no browser data</td>" in page
    assert "loss 20% on bob" in page
    summary = report.summary()
    assert summary["experiences"][0]["freeze_count"] == 2
    with pytest.raises(NotFound):
        call_report(mongo_db, "no-such-room")
