"""Diagnostics queries, KPIs, figures and export on embedded SecantusDB; the page via AppTest."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.database import Database

from videochat.events import CallEvent
from videochat.exceptions import ValidationError
from videochat.metrics.diagnostics import (
    Selection,
    badge_text,
    bands,
    build_figures,
    choose_bin,
    compute_kpis,
    iter_samples,
    list_calls,
    list_rooms,
    participants,
    query_events,
    query_samples,
    room_range,
    to_csv,
    to_json,
)
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import MetricsStore

Db = Database[dict[str, Any]]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
MINUTES = 6
LEGS = [("alice", "alice-pub", "publish"), ("alice", "alice-sub-bob", "subscribe"),
        ("bob", "bob-pub", "publish"), ("bob", "bob-sub-alice", "subscribe")]


def _sample(i: int, who: str, leg: str, direction: str, room: str = "r1") -> MetricSample:
    return MetricSample(
        at=T0 + timedelta(seconds=i), room=room, call_id="c1", participant=who, leg=leg,
        direction=direction, kind="video",  # type: ignore[arg-type]
        bitrate_in_kbps=float(i % 60) if direction == "publish" else 10.0,
        bitrate_out_kbps=300.0, rtt_ms=None if direction == "publish" else 20.0 + (i % 3) * 10,
        loss_fraction=0.02, loss_cumulative=i // 10, jitter_ms=3.0, fps=20.0,
        width=640, height=480 if i < 120 else 240, quality="high" if i < 120 else "low",
        # subscribers get the publisher's own stream until the rung drops below it
        delivery=None if direction == "publish" else "forwarded" if i < 120 else "transcoded",
    )


@pytest.fixture(scope="module")
def filled(secantus_server: Any) -> Iterator[Db]:
    """Six minutes of a two-person call (4 legs), with events, in a module-wide database."""
    import uuid

    from videochat.backends.services import mongo_client

    client = mongo_client(secantus_server.url)
    db = client["diag_" + uuid.uuid4().hex[:10]]
    store = MetricsStore(db, flush_interval_s=0.1)
    for i in range(MINUTES * 60):
        for who, leg, direction in LEGS:
            store.record(_sample(i, who, leg, direction))
    store.record(_sample(0, "carol", "carol-pub", "publish", room="other"))

    def ev(kind: str, s: int, who: str | None = "alice", **data: Any) -> None:
        store.emit(CallEvent(kind, "r1", participant=who, call_id="c1",
                             at=T0 + timedelta(seconds=s), data=data))

    ev("participant_joined", 0)
    ev("participant_joined", 1, "bob")
    ev("first_frame_received", 3, after_s=3.0)
    ev("first_frame_received", 5, "bob", after_s=4.0)
    ev("fault_started", 60, None, fault_id="f1", type="loss")
    ev("fault_ended", 90, None, fault_id="f1")
    ev("reconnect_started", 100, "bob")
    ev("reconnect_succeeded", 104, "bob")
    ev("quality_changed", 120, "alice", to="low")
    ev("fault_started", 300, None, fault_id="f2", type="blackout")  # never ended
    assert store.close(30)
    yield db
    client.drop_database(db.name)
    client.close()


def sel(start_s: float = 0, end_s: float = MINUTES * 60, **kw: Any) -> Selection:
    return Selection(room="r1", start=T0 + timedelta(seconds=start_s),
                     end=T0 + timedelta(seconds=end_s), **kw)


def test_bin_ladder() -> None:
    assert choose_bin(300, 300) == 1
    assert choose_bin(301, 300) == 10
    assert choose_bin(3600, 300) == 20
    assert choose_bin(3600, 60) == 60
    assert choose_bin(14 * 86_400, 300) == 7200
    with pytest.raises(ValidationError):
        choose_bin(10, 0)


def test_selection_validates() -> None:
    with pytest.raises(ValidationError):
        Selection(room="r", start=T0, end=T0)
    with pytest.raises(ValidationError):
        Selection(room="r", start=datetime(2026, 1, 1), end=datetime(2026, 1, 2))


def test_rooms_calls_participants(filled: Db) -> None:
    rooms = list_rooms(filled, now=T0 + timedelta(seconds=MINUTES * 60 + 5))
    by_name = {r.room: r for r in rooms}
    assert set(by_name) == {"r1", "other"}
    assert by_name["r1"].live and by_name["r1"].participants == ("alice", "bob")
    assert by_name["r1"].calls == ("c1",)
    assert not list_rooms(filled, now=T0 + timedelta(hours=2))[0].live
    calls = list_calls(filled, "r1", now=T0)
    assert [c.call_id for c in calls] == ["c1"] and calls[0].participants == ("alice", "bob")
    assert participants(filled, "r1") == ["alice", "bob"]
    assert participants(filled, "nope") == []
    first, last = room_range(filled, "r1") or (None, None)
    assert first == T0 and last == T0 + timedelta(seconds=MINUTES * 60 - 1)
    assert room_range(filled, "nope") is None


@pytest.mark.parametrize("max_points", [400, 40, 12, 3])
def test_downsampled_in_db_within_bounds(filled: Db, max_points: int) -> None:
    s = sel()
    series = query_samples(filled, s, max_points=max_points)
    assert series.bin_s == choose_bin(s.span_s, max_points)
    traces = series.traces()
    assert set(traces) == {(w, leg) for w, leg, _ in LEGS}
    for rows in traces.values():
        assert len(rows) <= max_points + 1
        assert sum(r["n"] for r in rows) == MINUTES * 60  # every sample counted once
        assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    pub = traces[("alice", "alice-pub")]
    # bitrate_in is i % 60: every whole minute averages to 29.5.
    if series.bin_s >= 60:
        assert all(r["bi"] == pytest.approx(29.5) for r in pub)
    else:
        assert pub[0]["bi"] == pytest.approx(sum(range(series.bin_s)) / series.bin_s)
    sub = traces[("alice", "alice-sub-bob")]
    assert max(r["rttx"] for r in sub) == 40.0
    assert all(r["rtt"] is None for r in pub)


def test_raw_resolution_and_subrange(filled: Db) -> None:
    series = query_samples(filled, sel(110, 130), max_points=300)
    assert series.bin_s == 1
    rows = series.traces()[("bob", "bob-pub")]
    assert len(rows) == 20
    assert rows[0]["t"] == T0 + timedelta(seconds=110)
    assert rows[9]["h"] == 480 and rows[10]["h"] == 240 and rows[10]["q"] == "low"


def test_participant_filter_and_unknown_room(filled: Db) -> None:
    series = query_samples(filled, sel(participants=("bob",)))
    assert {r["participant"] for r in series.rows} == {"bob"}
    empty = Selection(room="nope", start=T0, end=T0 + timedelta(hours=1))
    assert query_samples(filled, empty).rows == []
    assert query_events(filled, empty) == []


def test_events_bands_and_kpis(filled: Db) -> None:
    s = sel()
    events = query_events(filled, s)
    assert [e["kind"] for e in events][:2] == ["participant_joined", "participant_joined"]
    drawn = bands(events, s.end)
    assert [(b["kind"], b["outcome"]) for b in drawn] == [
        ("fault", "fault_ended"), ("reconnect", "reconnect_succeeded"), ("fault", "open")]
    assert drawn[-1]["end"] == s.end
    kpis = compute_kpis(query_samples(filled, s), events, s.end)
    assert kpis.time_to_first_frame_s == pytest.approx(3.5)
    assert kpis.reconnect_count == 1 and kpis.interruption_s == pytest.approx(4.0)
    assert kpis.rtt_mean_ms == pytest.approx(30.0, abs=0.5)
    assert kpis.rtt_max_ms == 40.0
    assert kpis.loss_mean == pytest.approx(0.02)
    assert kpis.packets_lost == 4 * ((MINUTES * 60 - 1) // 10)


def test_figures_have_a_legend_entry_per_participant_and_direction(filled: Db) -> None:
    s = sel()
    series = query_samples(filled, s, max_points=100)
    events = query_events(filled, s)
    figs = build_figures(series, events, s)
    assert set(figs) == {"bitrate", "rtt", "loss", "fps", "resolution", "freezes",
                         "jitter_buffer", "concealed", "timeline"}
    assert len(figs["bitrate"].data) == 4  # one line per leg, in the field its media follows
    legend = [t.name for t in figs["bitrate"].data if t.showlegend]
    assert sorted(legend) == ["alice receives", "alice sends", "bob receives", "bob sends"]
    assert all("-pub" not in n and "-sub" not in n for n in legend)  # leg ids: hover only
    assert any("leg alice-pub" in t.hovertemplate for t in figs["bitrate"].data)
    rtt_traces = figs["rtt"].data
    assert {t.name for t in rtt_traces} == {"alice receives", "bob receives"}
    for name, fig in figs.items():
        rects = [sh for sh in fig.layout.shapes if sh.type == "rect"]
        assert len(rects) == 3, name  # two faults and one reconnect, on every chart
        assert rects[0].label.text == "loss on the room"
        assert rects[1].label.text == "reconnect bob"
    # Events are on one strip of their own, not on every chart.
    (strip,) = figs["timeline"].data
    assert any("quality_changed" in txt for txt in strip.text)
    assert set(strip.y) >= {"alice", "bob", "room"}
    # No page reported: the browser charts say so instead of drawing zeros.
    assert "no browser data: alice, bob" in figs["freezes"].layout.annotations[0].text
    # Valid plotly all the same: serialising validates nothing away.
    assert json.loads(figs["rtt"].to_json())["data"]


def test_csv_and_json_export(filled: Db) -> None:
    s = sel(0, 120)
    series = query_samples(filled, s, max_points=10)
    events = query_events(filled, s)
    rows = list(csv.DictReader(io.StringIO(to_csv(series))))
    assert len(rows) == len(series.rows)
    assert {"time", "participant", "leg", "bitrate_in_kbps", "rtt_ms"} <= set(rows[0])
    doc = json.loads(to_json(s, series, events, compute_kpis(series, events, s.end)))
    assert doc["selection"]["room"] == "r1" and doc["bin_s"] == series.bin_s
    assert len(doc["samples"]) == len(series.rows) and "bitrate_in_kbps" in doc["samples"][0]
    assert doc["kpis"]["reconnect_count"] == 1
    assert {e["kind"] for e in doc["events"]} >= {"fault_started", "reconnect_started"}


def test_badge_text_and_iter_samples(filled: Db) -> None:
    got = list(iter_samples(filled, "r1", T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)))
    assert len(got) == 4 * 30
    assert got[0] == _sample(30, "alice", "alice-pub", "publish")
    assert badge_text(None) == "no data"
    sub = next(s for s in got if s.leg == "alice-sub-bob")
    assert sub == _sample(30, "alice", "alice-sub-bob", "subscribe")  # delivery kept
    assert badge_text(_sample(1, "a", "l", "subscribe")) == "forwarded · 30 ms · 2% loss"
    assert badge_text(_sample(130, "a", "l", "subscribe")) == "low · 30 ms · 2% loss"
    assert badge_text(_sample(1, "a", "l", "publish")) == "high · 20 fps · 2% loss"


# --- the page, through Streamlit's AppTest ---------------------------------------------------

PAGE = "from videochat.ui.diagnostics import render\nrender()\n"


@pytest.fixture
def page(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from types import SimpleNamespace

    from streamlit.testing.v1 import AppTest

    import videochat.ui.diagnostics as ui

    script = tmp_path / "diagnostics_page.py"
    script.write_text(PAGE)

    def make(db: Db, room: str | None) -> AppTest:
        monkeypatch.setattr(ui, "get_services", lambda: SimpleNamespace(db=db))
        at = AppTest.from_file(str(script), default_timeout=30)
        if room is not None:
            at.query_params["room"] = room
        return at

    yield make


def _charts(at: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out[spec["layout"]["title"]["text"]] = spec
    return out


def test_page_past_room_shows_kpis_and_charts(page: Any, filled: Db) -> None:
    at = page(filled, "r1").run()
    assert not at.exception
    charts = _charts(at)
    assert {"Bitrate", "Round-trip time", "Packet loss", "Frames per second"} <= set(charts)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reconnects"] == "1" and metrics["Max RTT"] == "40 ms"
    assert len(at.get("download_button")) == 3  # CSV, JSON and the HTML report


def test_page_unknown_room_gives_empty_state(page: Any, filled: Db) -> None:
    at = page(filled, "no-such-room").run()
    assert not at.exception
    assert any("No metrics for room" in w.value for w in at.warning)
    assert not at.get("plotly_chart")


def test_page_live_two_person_call(page: Any, mongo_db: Db) -> None:
    """The must-show: after a 10 s two-person call, bitrate and RTT for both, updating."""
    from videochat.clocks import utcnow

    store = MetricsStore(mongo_db, flush_interval_s=0.1)
    start = utcnow().replace(microsecond=0) - timedelta(seconds=10)

    def call_second(i: int) -> None:
        for who, leg, direction in LEGS:
            s = _sample(i, who, leg, direction, room="live-room")
            store.record(MetricSample(**{**s.to_dict(), "at": start + timedelta(seconds=i)}))

    for i in range(10):
        call_second(i)
    assert store.flush(10)
    at = page(mongo_db, "live-room").run()
    assert not at.exception
    charts = _charts(at)
    assert len(charts) >= 2
    for title in ("Bitrate", "Round-trip time"):
        names = [t["name"] for t in charts[title]["data"]]
        assert any(n.startswith("alice") for n in names), names
        assert any(n.startswith("bob") for n in names), names
    assert any(t.value for t in at.toggle)  # live updates on for a live room
    before = sum(len(t["x"]) for t in charts["Bitrate"]["data"])
    for i in range(10, 13):
        call_second(i)
    assert store.close(10)
    at.run()
    after = sum(len(t["x"]) for t in _charts(at)["Bitrate"]["data"])
    assert after > before


def test_server_restart_gap_is_drawn_as_a_band() -> None:
    gap_from = T0 + timedelta(seconds=30)
    gap_to = T0 + timedelta(seconds=34.5)
    events = [{"kind": "server_restart", "at": gap_to, "room": "r1", "participant": None,
               "data": {"gap_from": gap_from.timestamp(), "gap_to": gap_to.timestamp(),
                        "gap_s": 4.5}}]
    drawn = bands(events, T0 + timedelta(minutes=5))
    assert [(b["kind"], b["start"], b["end"]) for b in drawn] == [
        ("server_restart", gap_from, gap_to)]
