"""A QA run's outcome: the JSON report, the HTML report beside it, and run history in MongoDB.

The HTML is rendered from the JSON document alone (`render_html(doc)`), so a run stored in
`qa_runs` can be shown again later without its files. The HTML embeds plotly.js once, inline: a
report must open on a machine with no internet access.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pymongo
from pymongo.database import Database
from pymongo.errors import PyMongoError

from videochat.backends import keys
from videochat.exceptions import BackendUnavailable, NotFound
from videochat.metrics import diagnostics as diag
from videochat.qa.assertions import AssertionResult, RunMeasurements, Sample, all_passed
from videochat.qa.scenario import Scenario

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
COLLECTION = keys.QA_RUNS

_CHARTS: tuple[tuple[str, str, str | None], ...] = (
    # series key, title, the assertion whose threshold is drawn on it
    ("fps", "Frames per second (per leg)", "min_fps"),
    ("received_fps", "Received frames per second (what each page decoded)",
     "min_fps_during_faults"),
    ("rtt_ms", "Round-trip time, ms (per leg)", "max_rtt_ms"),
    ("quality_level", "Quality level (per leg; higher is better)", None),
)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by time, unique enough for concurrent runs: 20261126T004512-3fa9c1."""
    return f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def _samples(samples: list[Sample] | None) -> list[list[Any]] | None:
    return None if samples is None else [[s.t_s, s.series, s.value] for s in samples]


@dataclass
class RunResult:
    run_id: str
    scenario: Scenario
    room: str
    started_at: datetime
    ended_at: datetime
    measurements: RunMeasurements
    results: list[AssertionResult]
    error: str | None = None
    """Why the run itself went wrong (app did not start, a participant never joined)."""
    source: str | None = None
    """The scenario file, when it was not a built-in."""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and all_passed(self.results)

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (plain JSON types only)."""
        m = self.measurements
        return {
            "report_version": REPORT_VERSION,
            "run_id": self.run_id,
            "passed": self.passed,
            "error": self.error,
            "scenario": {
                "name": self.scenario.name,
                "description": self.scenario.description,
                "source": self.source,
                "definition": self.scenario.model_dump(mode="json"),
            },
            "room": self.room,
            "timings": {
                "started_at": _iso(self.started_at),
                "ended_at": _iso(self.ended_at),
                "duration_s": round(self.duration_s, 3),
                "faults": [asdict(w) for w in m.fault_windows],
            },
            "assertions": [r.to_dict() for r in self.results],
            "measurements": {
                "reconnect_times_s": m.reconnect_times_s,
                "quality_step_down_s": m.quality_step_down_s,
                "back_to_full_quality_s": m.back_to_full_quality_s,
                "video_resumed_s": m.video_resumed_s,
                "chat": None if m.chat is None else {**asdict(m.chat), "lost": m.chat.lost},
                "metrics_lost": m.metrics_lost,
                "video_back_s": m.video_back_s,
                "browser_freezes": None if m.freezes is None else {
                    who: {"freezes": c, "frozen_s": f, "longest_s": lg}
                    for who, (c, f, lg) in m.freezes.items()},
            },
            "series": {
                "fps": _samples(m.fps),
                "rtt_ms": _samples(m.rtt_ms),
                "quality_level": _samples(m.quality_level),
                "received_fps": _samples(m.received_fps),
            },
            "events": [asdict(e) for e in m.events],
            "notes": list(self.notes),
        }


def save_report(result: RunResult, path_json: str | Path) -> tuple[Path, Path]:
    """Write the JSON report and, beside it with the suffix .html, the HTML report."""
    json_path = Path(path_json)
    html_path = json_path.with_suffix(".html")
    if html_path == json_path:
        html_path = json_path.with_name(json_path.name + ".html")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    doc = result.to_dict()
    doc["html_report"] = html_path.name
    # allow_nan=False: a NaN would make the report unreadable by strict JSON parsers.
    json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(doc), encoding="utf-8")
    logger.info("QA report %s: %s", "passed" if result.passed else "FAILED", json_path)
    return json_path, html_path


# ---------------------------------------------------------------------------------------------
# HTML


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{margin-bottom:.2rem} .muted{color:#666} table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} .pass{color:#16794c;font-weight:600} .fail{color:#b42318;font-weight:600}
.banner{display:inline-block;padding:.3rem .8rem;border-radius:.3rem;color:#fff;font-weight:700}
.banner.pass{background:#16794c;color:#fff} .banner.fail{background:#b42318;color:#fff}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fault_bands(fig: go.Figure, faults: list[Mapping[str, Any]]) -> None:
    for f in faults:
        start, end = float(f["start_s"]), float(f["end_s"])
        label = f"{f['kind']} on {f['target']}"
        if end - start < 0.2:  # an instantaneous fault (kill): a line, not a band
            fig.add_vline(x=start, line_color="#b42318", line_dash="dot",
                          annotation_text=label, annotation_position="top left")
        else:
            fig.add_vrect(x0=start, x1=end, fillcolor="#b42318", opacity=0.15, line_width=0,
                          annotation_text=label, annotation_position="top left")


def _series_figure(
    title: str, rows: list[list[Any]], faults: list[Mapping[str, Any]], threshold: float | None,
    duration_s: float, line_shape: str = "linear",
) -> go.Figure:
    by_series: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for t, series, value in rows:
        by_series[str(series)][0].append(float(t))
        by_series[str(series)][1].append(float(value))
    fig = go.Figure()
    for name, (xs, ys) in sorted(by_series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name,
                                 marker={"size": 4}, line={"shape": line_shape}))
    _fault_bands(fig, faults)
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="#555",
                      annotation_text=f"objective {threshold:g}")
    fig.update_layout(title=title, xaxis_title="seconds since the run started", height=360,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      xaxis={"range": [0, max(duration_s, 1.0)]})
    return fig


def _timeline_figure(doc: Mapping[str, Any], duration_s: float) -> go.Figure:
    events = doc.get("events") or []
    fig = go.Figure()
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in events:
        by_kind[str(e["kind"])].append(e)
    for kind, items in sorted(by_kind.items()):
        fig.add_trace(go.Scatter(
            x=[e["t_s"] for e in items], y=[e.get("participant") or "room" for e in items],
            mode="markers", name=kind, marker={"size": 10, "symbol": "diamond"},
            text=[e.get("detail", "") for e in items],
            hovertemplate="%{y}: " + kind + " at %{x:.2f} s<br>%{text}<extra></extra>",
        ))
    _fault_bands(fig, doc["timings"]["faults"])
    fig.update_layout(title="Timeline: faults and call events", height=260,
                      xaxis_title="seconds since the run started",
                      margin={"l": 80, "r": 20, "t": 50, "b": 40},
                      xaxis={"range": [0, max(duration_s, 1.0)]})
    return fig


def _verdict_table(doc: Mapping[str, Any]) -> str:
    rows = []
    for a in doc["assertions"]:
        cls = "pass" if a["passed"] else "fail"
        unit = f" {a['unit']}" if a.get("unit") else ""
        measured = _fmt(a["measured"]) + (unit if a["measured"] is not None else "")
        rows.append(
            f"<tr><td>{html.escape(a['name'])}</td><td>{html.escape(measured)}</td>"
            f"<td>{html.escape(_fmt(a['threshold']) + unit)}</td>"
            f"<td class='{cls}'>{'PASS' if a['passed'] else 'FAIL'}</td>"
            f"<td>{html.escape(str(a['detail']))}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='5' class='fail'>no objective was evaluated</td></tr>")
    return ("<table><tr><th>objective</th><th>measured</th><th>threshold</th><th>verdict</th>"
            "<th>detail</th></tr>" + "".join(rows) + "</table>")


def render_html(doc: Mapping[str, Any]) -> str:
    """The HTML report of a JSON report document (from `RunResult.to_dict` or `qa_runs`)."""
    timings = doc["timings"]
    duration = float(timings["duration_s"])
    thresholds = {a["name"]: a["threshold"] for a in doc["assertions"]}
    figures = [_timeline_figure(doc, duration)]
    missing = []
    for key, title, objective in _CHARTS:
        rows = (doc.get("series") or {}).get(key)
        if rows:
            # A quality level holds until the next change: draw steps, not slopes.
            shape = "hv" if key == "quality_level" else "linear"
            figures.append(_series_figure(title, rows, timings["faults"],
                                          thresholds.get(objective) if objective else None,
                                          duration, shape))
        elif objective in thresholds:
            missing.append(title)
    charts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    ]
    passed = bool(doc["passed"])
    scenario = doc["scenario"]
    esc = html.escape
    error = f"<p class='fail'>Run error: {esc(str(doc['error']))}</p>" if doc.get("error") else ""
    missing_note = "".join(f"<p class='muted'>No samples for “{esc(t)}”.</p>" for t in missing)
    fault_rows = "".join(
        f"<tr><td>{esc(str(f['kind']))}</td><td>{esc(str(f['target']))}</td>"
        f"<td>{float(f['start_s']):.2f}</td><td>{float(f['end_s']):.2f}</td></tr>"
        for f in timings["faults"]
    ) or "<tr><td colspan='4' class='muted'>none</td></tr>"
    verdict = "passed" if passed else "FAILED"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>QA {esc(scenario['name'])} · {verdict} · {esc(doc['run_id'])}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(scenario['name'])} <span class="banner {'pass' if passed else 'fail'}">
{'PASSED' if passed else 'FAILED'}</span></h1>
<p class="muted">{esc(scenario.get('description') or '')}</p>
<p>Run <code>{esc(doc['run_id'])}</code> in room <code>{esc(doc['room'])}</code>,
{esc(timings['started_at'])} → {esc(timings['ended_at'])} ({duration:.1f} s).</p>
{error}
<h2>Verdicts</h2>
{_verdict_table(doc)}
<h2>Faults</h2>
<table><tr><th>kind</th><th>target</th><th>start, s</th><th>end, s</th></tr>{fault_rows}</table>
<h2>Charts</h2>
{missing_note}
{''.join(f'<div class="chart">{c}</div>' for c in charts)}
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# run history


_SUMMARY_FIELDS = {"series": 0, "events": 0, "scenario.definition": 0}


class RunStore:
    """Run history in MongoDB, one document per run in `qa_runs`, keyed by run id."""

    def __init__(self, db: Database[Any]) -> None:
        self._col = db[COLLECTION]

    def ensure_indexes(self) -> None:
        try:
            self._col.create_index([("started_at", pymongo.DESCENDING)])
            self._col.create_index([("scenario.name", pymongo.ASCENDING),
                                    ("started_at", pymongo.DESCENDING)])
        except PyMongoError as exc:
            raise BackendUnavailable(f"cannot index {COLLECTION}: {exc}") from exc

    def save(self, result: RunResult | Mapping[str, Any], *, json_path: Path | None = None,
             html_path: Path | None = None) -> str:
        """Store (or replace) a run; returns its id."""
        doc = dict(result.to_dict() if isinstance(result, RunResult) else result)
        doc["_id"] = doc["run_id"]
        # Real dates, so history sorts and filters by time; the report keeps its ISO strings.
        doc["started_at"] = datetime.fromisoformat(doc["timings"]["started_at"])
        doc["report_json"] = str(json_path) if json_path else None
        doc["report_html"] = str(html_path) if html_path else None
        try:
            self._col.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise BackendUnavailable(f"cannot store QA run {doc['_id']}: {exc}") from exc
        return str(doc["_id"])

    def list(self, limit: int = 50, scenario: str | None = None) -> list[dict[str, Any]]:
        """Newest first, without the bulky series: run_id, passed, scenario, timings, verdicts."""
        query = {"scenario.name": scenario} if scenario else {}
        try:
            cursor = self._col.find(query, _SUMMARY_FIELDS).sort("started_at", -1).limit(limit)
            return [dict(d) for d in cursor]
        except PyMongoError as exc:
            raise BackendUnavailable(f"cannot read {COLLECTION}: {exc}") from exc

    def get(self, run_id: str) -> dict[str, Any]:
        """The full report document of one run; NotFound when there is none."""
        try:
            doc = self._col.find_one({"_id": run_id})
        except PyMongoError as exc:
            raise BackendUnavailable(f"cannot read {COLLECTION}: {exc}") from exc
        if doc is None:
            raise NotFound(f"no QA run {run_id!r}")
        return dict(doc)


# ---------------------------------------------------------------------------------------------
# a report for any call (the Diagnostics page's download, `qa call-report`)


def render_call_html(sel: diag.Selection, series: diag.Series, events: list[dict[str, Any]],
                     kpis: diag.Kpis) -> str:
    """The HTML report of any call, not only a QA run: the same page style, the Diagnostics
    charts (timeline, network, what each page saw), KPIs, experience per participant and the
    events. Self-contained like the QA report (plotly.js inline, once)."""
    esc = html.escape
    figures = diag.build_figures(series, events, sel)
    order = ["timeline", *diag.CHARTS]
    charts = [figures[name].to_html(full_html=False, include_plotlyjs=(i == 0),
                                    config={"displaylogo": False})
              for i, name in enumerate(order)]

    def fmt(v: Any, spec: str, unit: str = "") -> str:
        return "—" if v is None else f"{format(v, spec)}{unit}"

    k = kpis
    kpi_rows = [
        ("Time to first frame", fmt(k.time_to_first_frame_s, ".1f", " s")),
        ("Reconnects", str(k.reconnect_count)),
        ("Interruption", fmt(k.interruption_s, ".1f", " s")),
        ("Mean RTT", fmt(k.rtt_mean_ms, ".0f", " ms")),
        ("Max RTT", fmt(k.rtt_max_ms, ".0f", " ms")),
        ("Loss", fmt(k.loss_mean, ".1%")),
        ("Packets lost", str(k.packets_lost)),
        ("Experience (MOS-like, 1–4.5)", fmt(k.experience_score, ".2f")),
    ]
    kpi_table = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in kpi_rows)
    people = "".join(
        f"<tr><td>{esc(e.participant)}</td><td>{esc(e.text(e.freeze_count, 'd'))}</td>"
        f"<td>{esc(e.text(e.freeze_s, '.2f'))}</td>"
        f"<td>{esc(e.text(e.longest_freeze_s, '.2f'))}</td>"
        f"<td>{esc(e.text(e.jitter_buffer_ms, '.1f'))}</td>"
        f"<td>{esc(e.text(e.concealed_pct, '.2f'))}</td>"
        f"<td>{esc(fmt(e.score, '.2f'))}</td></tr>"
        for e in k.experiences
    ) or "<tr><td colspan='7' class='muted'>no participant</td></tr>"
    event_rows = "".join(
        f"<tr><td>{esc(e['at'].astimezone(UTC).strftime('%H:%M:%S.%f')[:-3])}</td>"
        f"<td>{esc(str(e['kind']))}</td><td>{esc(str(e.get('participant') or ''))}</td>"
        f"<td>{esc(diag.fault_text(e) or json.dumps(e.get('data') or {}, default=str)[:160])}"
        f"</td></tr>"
        for e in events[:500]
    ) or "<tr><td colspan='4' class='muted'>none</td></tr>"
    title = f"Call {sel.call_id or ''} in room {sel.room}".replace("  ", " ")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(_iso(sel.start))} → {esc(_iso(sel.end))} UTC · one point per {series.bin_s} s ·
{len(series.rows)} points · {len(events)} events. Solid lines: measured by the server;
dotted: measured by the participant's page.</p>
<h2>KPIs</h2>
<table>{kpi_table}</table>
<h2>What each participant saw (their own page)</h2>
<table><tr><th>participant</th><th>freezes</th><th>frozen, s</th><th>longest freeze, s</th>
<th>jitter-buffer delay, ms</th><th>concealed audio, %</th><th>experience</th></tr>{people}
</table>
<h2>Charts</h2>
{''.join(f'<div class="chart">{c}</div>' for c in charts)}
<h2>Events</h2>
<table><tr><th>time (UTC)</th><th>event</th><th>participant</th><th>detail</th></tr>
{event_rows}</table>
</body></html>
"""


@dataclass
class CallReport:
    selection: diag.Selection
    series: diag.Series
    events: list[dict[str, Any]]
    kpis: diag.Kpis

    def html(self) -> str:
        return render_call_html(self.selection, self.series, self.events, self.kpis)

    def summary(self) -> dict[str, Any]:
        """The KPIs as plain JSON types (what `qa call-report` prints)."""
        doc: dict[str, Any] = json.loads(diag.to_json(
            self.selection, diag.Series(self.series.bin_s), [], self.kpis))
        return dict(doc["kpis"])


def call_report(db: Database[Any], room: str, call_id: str | None = None, *,
                max_points: int = 1200) -> CallReport:
    """Everything recorded of a call (or of a whole room, without `call_id`); NotFound when
    it has no samples."""
    span = diag.room_range(db, room, call_id)
    if span is None:
        raise NotFound(f"no samples for room {room!r}" + (f", call {call_id!r}" if call_id
                                                            else ""))
    sel = diag.Selection(room=room, start=span[0], end=span[1] + timedelta(seconds=1),
                         call_id=call_id)
    series = diag.query_samples(db, sel, max_points=max_points)
    events = diag.query_events(db, sel)
    return CallReport(sel, series, events, diag.compute_kpis(series, events, sel.end))
