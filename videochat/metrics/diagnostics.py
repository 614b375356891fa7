"""Diagnostics queries and charts over what `videochat/metrics/store.py` wrote (no Streamlit).

Long ranges are downsampled in MongoDB: the range picks a bin width from a ladder so that no
trace gets more than `max_points` points. A range short enough for one point per second reads
the raw minute buckets (`samples`); otherwise the query reads the small summary documents
(`samples_10s`, written beside the raw buckets by `store.py`): 10, 20 and 30-s bins are
projected from each minute's precomputed bins, and a minute or more `$group`s the minute
summaries by `$dateTrunc`. Only the bins travel to the app, never the per-second points of a
long range.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import plotly.graph_objects as go
from pymongo.database import Database

from videochat.clocks import utcnow
from videochat.exceptions import ValidationError
from videochat.metrics.experience import Experience, call_score, experiences, idle_legs
from videochat.metrics.stats import MetricSample, Source
from videochat.metrics.store import EVENTS, ROLLUPS, SAMPLES, fields_of

logger = logging.getLogger(__name__)

MongoDoc = dict[str, Any]
Db = Database[MongoDoc]

BIN_LADDER_S = (1, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21_600, 43_200,
                86_400)
DEFAULT_MAX_POINTS = 300
LIVE_WITHIN_S = 15.0
METRICS = ("bi", "bo", "rtt", "lf", "j", "fps", "jb", "ca", "dm", "ao")
MAXED = ("rttx", "lc", "w", "h", "fc", "fz", "fd")
COLUMNS = {
    "bi": "bitrate_in_kbps", "bo": "bitrate_out_kbps", "rtt": "rtt_ms", "rttx": "rtt_max_ms",
    "lf": "loss_fraction", "lc": "loss_cumulative", "j": "jitter_ms", "fps": "fps",
    "w": "width", "h": "height", "q": "quality", "d": "delivery", "n": "samples",
    "fc": "freeze_count", "fz": "freeze_s", "jb": "jitter_buffer_ms", "ca": "concealed_pct",
    "dm": "decode_ms", "fd": "frames_dropped", "ao": "available_out_kbps", "source": "source",
}
BAND_PAIRS = {"fault_started": ("fault_ended",),
              "reconnect_started": ("reconnect_succeeded", "reconnect_failed")}
MARKER_KINDS = frozenset({
    "quality_changed", "participant_joined", "participant_left", "participant_reconnecting",
    "reconnect_succeeded", "reconnect_failed", "connection_state_changed", "media_stalled",
    "backend_down", "backend_up", "call_started", "call_ended", "server_restart",
})
MAX_MARKERS = 300


@dataclass(frozen=True)
class Selection:
    """What the dashboard shows: a room (optionally one call, some participants) over a range."""

    room: str
    start: datetime
    end: datetime
    call_id: str | None = None
    participants: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.room:
            raise ValidationError("room", self.room, "must not be empty")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValidationError("time range", (self.start, self.end), "must be timezone-aware")
        if self.end <= self.start:
            raise ValidationError("time range", (self.start, self.end), "end must be after start")

    @property
    def span_s(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class RoomSummary:
    room: str
    first_at: datetime
    last_at: datetime
    live: bool
    participants: tuple[str, ...]
    calls: tuple[str, ...]


@dataclass(frozen=True)
class CallSummary:
    call_id: str
    room: str
    first_at: datetime
    last_at: datetime
    live: bool
    participants: tuple[str, ...]


@dataclass
class Series:
    """Downsampled rows: one dict per (leg, bin) with the short metric names plus meta."""

    bin_s: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def traces(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Rows per (participant, leg), in time order."""
        out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            out[(row["participant"], row["leg"])].append(row)
        return dict(out)


@dataclass(frozen=True)
class Kpis:
    time_to_first_frame_s: float | None
    reconnect_count: int
    interruption_s: float
    rtt_mean_ms: float | None
    rtt_max_ms: float | None
    loss_mean: float | None
    packets_lost: int
    # What people saw (metrics/experience.py): per participant, and the call's mean score.
    experiences: tuple[Experience, ...] = ()
    experience_score: float | None = None


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# --- rooms, calls, participants ----------------------------------------------------------------

def list_rooms(db: Db, *, now: datetime | None = None,
               live_within_s: float = LIVE_WITHIN_S) -> list[RoomSummary]:
    """Every room with samples or events, newest activity first."""
    now = now or utcnow()
    pipeline: list[MongoDoc] = [
        {"$group": {"_id": "$meta.room", "first": {"$min": "$at"}, "last": {"$max": "$last"},
                    "participants": {"$addToSet": "$meta.participant"},
                    "calls": {"$addToSet": "$meta.call_id"}}},
    ]
    rooms: dict[str, dict[str, Any]] = {}
    for doc in db[ROLLUPS].aggregate(pipeline):
        rooms[doc["_id"]] = doc
    for doc in db[EVENTS].aggregate([
        {"$group": {"_id": "$room", "first": {"$min": "$at"}, "last": {"$max": "$at"},
                    "participants": {"$addToSet": "$participant"},
                    "calls": {"$addToSet": "$call_id"}}},
    ]):
        have = rooms.setdefault(doc["_id"], doc)
        if have is not doc:
            have["first"] = min(_aware(have["first"]), _aware(doc["first"]))
            have["last"] = max(_aware(have["last"]), _aware(doc["last"]))
            have["participants"] = list(set(have["participants"]) | set(doc["participants"]))
            have["calls"] = list(set(have["calls"]) | set(doc["calls"]))
    out = [
        RoomSummary(
            room=name, first_at=_aware(d["first"]), last_at=_aware(d["last"]),
            live=(now - _aware(d["last"])).total_seconds() <= live_within_s,
            participants=tuple(sorted(p for p in d["participants"] if p)),
            calls=tuple(sorted(c for c in d["calls"] if c)),
        )
        for name, d in rooms.items() if name and d.get("first") and d.get("last")
    ]
    return sorted(out, key=lambda r: r.last_at, reverse=True)


def list_calls(db: Db, room: str | None = None, *, now: datetime | None = None,
               live_within_s: float = LIVE_WITHIN_S) -> list[CallSummary]:
    now = now or utcnow()
    match: MongoDoc = {"meta.call_id": {"$ne": None}}
    if room:
        match["meta.room"] = room
    out = []
    for d in db[ROLLUPS].aggregate([
        {"$match": match},
        {"$group": {"_id": {"call": "$meta.call_id", "room": "$meta.room"},
                    "first": {"$min": "$at"}, "last": {"$max": "$last"},
                    "participants": {"$addToSet": "$meta.participant"}}},
    ]):
        last = _aware(d["last"])
        out.append(CallSummary(
            call_id=d["_id"]["call"], room=d["_id"]["room"], first_at=_aware(d["first"]),
            last_at=last, live=(now - last).total_seconds() <= live_within_s,
            participants=tuple(sorted(d["participants"]))))
    return sorted(out, key=lambda c: c.last_at, reverse=True)


def participants(db: Db, room: str, *, call_id: str | None = None) -> list[str]:
    query: MongoDoc = {"meta.room": room}
    if call_id:
        query["meta.call_id"] = call_id
    return sorted(p for p in db[ROLLUPS].distinct("meta.participant", query) if p)


def room_range(db: Db, room: str, call_id: str | None = None) -> tuple[datetime, datetime] | None:
    """First and last sample time of a room (or call); None when it has none."""
    match: MongoDoc = {"meta.room": room}
    if call_id:
        match["meta.call_id"] = call_id
    docs = list(db[ROLLUPS].aggregate([
        {"$match": match},
        {"$group": {"_id": None, "first": {"$min": "$at"}, "last": {"$max": "$last"}}},
    ]))
    if not docs or docs[0]["first"] is None:
        return None
    return _aware(docs[0]["first"]), _aware(docs[0]["last"])


# --- samples, downsampled in the database ---------------------------------------------------

def choose_bin(span_s: float, max_points: int = DEFAULT_MAX_POINTS) -> int:
    if max_points < 1:
        raise ValidationError("max_points", max_points, "must be at least 1")
    for width in BIN_LADDER_S:
        if math.ceil(span_s / width) <= max_points:
            return width
    return BIN_LADDER_S[-1]


def _match(sel: Selection) -> MongoDoc:
    match: MongoDoc = {
        "meta.room": sel.room,
        "at": {"$gte": sel.start.replace(second=0, microsecond=0), "$lt": sel.end},
    }
    if sel.call_id:
        match["meta.call_id"] = sel.call_id
    if sel.participants is not None:
        match["meta.participant"] = {"$in": list(sel.participants)}
    return match


RAW_FIELDS = (*METRICS, "lc", "w", "h", "q", "fc", "fz", "fd", "d")


def _raw_bins(doc: MongoDoc) -> list[dict[str, Any]]:
    """A raw minute bucket as one bin per held second (no downsampling at one point/s)."""
    out = []
    for slot, held in enumerate(doc.get("p") or []):
        if held:
            b = {f: (doc.get(f) or [None] * 60)[slot] for f in RAW_FIELDS}
            b.update(o=slot, n=1, rttx=b["rtt"])
            out.append(b)
    return out


def query_samples(db: Db, sel: Selection, *, max_points: int = DEFAULT_MAX_POINTS) -> Series:
    """Samples of the selection, at most about `max_points` bins per leg, aggregated in MongoDB."""
    width = choose_bin(sel.span_s, max_points)
    series = Series(bin_s=width)
    if width < 60:
        if width == 1:
            coll, project = SAMPLES, {"meta": 1, "at": 1, "p": 1, **{f: 1 for f in RAW_FIELDS}}
        else:
            coll, project = ROLLUPS, {"meta": 1, "at": 1, f"r{width}": 1}
        pipeline: list[MongoDoc] = [{"$match": _match(sel)}, {"$project": project}]
        for doc in db[coll].aggregate(pipeline):
            at = _aware(doc["at"])
            if width == 1:
                bins = _raw_bins(doc)
            else:
                cols = doc[f"r{width}"]
                bins = [{k: v[i] for k, v in cols.items()} | {"o": i * width}
                        for i in range(len(cols["n"]))]
            for b in bins:
                if not b.get("n"):
                    continue
                t = at + timedelta(seconds=b["o"])
                if sel.start - timedelta(seconds=width) < t < sel.end:
                    series.rows.append(_row(doc["meta"], t, b))
    else:
        # Unweighted mean of minute means: exact for full minutes, close enough at the edges.
        group: MongoDoc = {
            "_id": {"leg": "$meta.leg", "room": "$meta.room",
                    "t": {"$dateTrunc": {"date": "$at", "unit": "minute",
                                         "binSize": width // 60}}},
            "meta": {"$first": "$meta"}, "n": {"$sum": "$m.n"}, "q": {"$last": "$m.q"},
            "d": {"$last": "$m.d"},
        }
        group.update({f: {"$avg": f"$m.{f}"} for f in METRICS})
        group.update({f: {"$max": f"$m.{f}"} for f in MAXED})
        pipeline = [{"$match": _match(sel)}, {"$sort": {"at": 1}},
                    {"$project": {"meta": 1, "at": 1, "m": 1}}, {"$group": group}]
        for doc in db[ROLLUPS].aggregate(pipeline):
            if doc.get("n"):
                series.rows.append(_row(doc["meta"], _aware(doc["_id"]["t"]), doc))
    series.rows.sort(key=lambda r: (r["participant"], r["leg"], r["t"]))
    return series


def _row(meta: MongoDoc, t: datetime, values: MongoDoc) -> dict[str, Any]:
    row: dict[str, Any] = {
        "t": t, "room": meta.get("room"), "call_id": meta.get("call_id"),
        "participant": meta.get("participant"), "leg": meta.get("leg"),
        "direction": meta.get("direction"), "kind": meta.get("kind"),
        "source": meta.get("source") or "server",
    }
    for f in (*METRICS, *MAXED, "q", "d", "n"):
        row[f] = values.get(f)
    return row


def iter_samples(db: Db, room: str, start: datetime, end: datetime, *,
                 call_id: str | None = None) -> Iterator[MetricSample]:
    """Every stored per-second sample of a room in [start, end), in time order per leg.

    For QA runs and exact checks (a run's samples stored vs taken); the dashboard uses the
    downsampled `query_samples` instead.
    """
    match = _match(Selection(room=room, start=start, end=end, call_id=call_id))
    for doc in db[SAMPLES].find(match).sort([("meta.leg", 1), ("at", 1)]):
        at0, meta = _aware(doc["at"]), doc["meta"]
        for slot, held in enumerate(doc.get("p") or []):
            at = at0 + timedelta(seconds=slot)
            if not held or not start <= at < end:
                continue
            source: Source = "browser" if meta.get("source") == "browser" else "server"
            values = {name: (doc.get(short) or [None] * 60)[slot]
                      for name, short in fields_of(source).items()}
            yield MetricSample(at=at, room=meta["room"], call_id=meta.get("call_id"),
                               participant=meta["participant"], leg=meta["leg"],
                               direction=meta["direction"], kind=meta["kind"], source=source,
                               **values)


def badge_text(sample: MetricSample | None) -> str:
    """The call page's small live badge: "forwarded" or the quality level, and RTT (or
    frame rate)."""
    if sample is None:
        return "no data"
    parts = ["forwarded" if sample.delivery == "forwarded" else sample.quality or "?"]
    if sample.rtt_ms is not None:
        parts.append(f"{sample.rtt_ms:.0f} ms")
    elif sample.fps is not None:
        parts.append(f"{sample.fps:.0f} fps")
    if sample.loss_fraction:
        parts.append(f"{sample.loss_fraction:.0%} loss")
    return " · ".join(parts)


# --- events and KPIs ---------------------------------------------------------------------

def query_events(db: Db, sel: Selection, *, limit: int = 5_000) -> list[dict[str, Any]]:
    query: MongoDoc = {"room": sel.room, "at": {"$gte": sel.start, "$lt": sel.end}}
    if sel.call_id:
        query["call_id"] = {"$in": [sel.call_id, None]}
    if sel.participants is not None:
        query["participant"] = {"$in": [*sel.participants, None]}
    docs = list(db[EVENTS].find(query, {"_id": 0}).sort([("at", 1), ("_id", 1)]).limit(limit))
    for d in docs:
        d["at"] = _aware(d["at"])
    return docs


def bands(events: Sequence[dict[str, Any]], end: datetime) -> list[dict[str, Any]]:
    """Fault and reconnect intervals, and the gaps of server restarts (one event holds both
    ends); one left open is drawn up to `end`."""
    open_: dict[tuple[str, Any], dict[str, Any]] = {}
    out = []
    closers = {c: start for start, cs in BAND_PAIRS.items() for c in cs}
    for e in events:
        data = e.get("data") or {}
        if e["kind"] == "server_restart" and "gap_from" in data and "gap_to" in data:
            out.append({"kind": "server_restart",
                        "start": datetime.fromtimestamp(float(data["gap_from"]), UTC),
                        "end": datetime.fromtimestamp(float(data["gap_to"]), UTC),
                        "participant": None, "label": _label(e), "outcome": "server_restart"})
            continue
        key_id = data.get("fault_id") or data.get("id") or e.get("participant") or e.get("leg")
        if e["kind"] in BAND_PAIRS:
            open_.setdefault((e["kind"], key_id), e)
        elif e["kind"] in closers:
            started = open_.pop((closers[e["kind"]], key_id), None)
            if started is not None:
                out.append({"kind": closers[e["kind"]].removesuffix("_started"),
                            "start": started["at"], "end": e["at"],
                            "participant": started.get("participant"),
                            "label": _label(started), "fault": fault_text(started),
                            "outcome": e["kind"]})
    for (kind, _), started in open_.items():
        out.append({"kind": kind.removesuffix("_started"), "start": started["at"], "end": end,
                    "participant": started.get("participant"), "label": _label(started),
                    "fault": fault_text(started), "outcome": "open"})
    return sorted(out, key=lambda b: b["start"])


_UNITS = {"percent": "%", "ms": " ms", "jitter_ms": " ms jitter", "kbps": " kbps"}


def fault_text(e: dict[str, Any]) -> str | None:
    """A fault event in a few words: "loss 20% on bob", "poor-3g on the room"."""
    if not str(e.get("kind", "")).startswith("fault_"):
        return None
    data = e.get("data") or {}
    params = data.get("params") or {}
    what = data.get("preset") or data.get("fault_kind") or data.get("type") or "fault"
    shown = [f"{v:g}{_UNITS[k]}" if isinstance(v, int | float) else f"{v}{_UNITS[k]}"
             for k, v in params.items() if k in _UNITS and v]
    if not data.get("preset") and shown:
        what = f"{what} {' '.join(shown)}"
    direction = data.get("direction")
    if direction and direction != "both":
        what += f" ({direction})"
    return f"{what} on {e.get('participant') or 'the room'}"


def _label(e: dict[str, Any]) -> str:
    data = e.get("data") or {}
    extra = ", ".join(f"{k}={v}" for k, v in list(data.items())[:4])
    who = e.get("participant") or ""
    return f"{e['kind']} {who} {extra}".strip()


def compute_kpis(series: Series, events: Sequence[dict[str, Any]],
                 end: datetime | None = None) -> Kpis:
    end = end or utcnow()
    joined: dict[str, datetime] = {}
    ttff: list[float] = []
    for e in events:
        who = e.get("participant")
        if e["kind"] == "participant_joined" and who and who not in joined:
            joined[who] = e["at"]
        elif e["kind"] == "first_frame_received":
            given = (e.get("data") or {}).get("after_s")
            if isinstance(given, int | float):
                ttff.append(float(given))
            elif who in joined:
                ttff.append((e["at"] - joined[who]).total_seconds())
    reconnects = [b for b in bands(events, end) if b["kind"] == "reconnect"]
    interruption = sum((b["end"] - b["start"]).total_seconds() for b in reconnects)
    n_reconnects = len(reconnects) or sum(1 for e in events if e["kind"] == "reconnect_succeeded")
    rtt_w = [(r["rtt"], r.get("n") or 1) for r in series.rows if r.get("rtt") is not None]
    loss_w = [(r["lf"], r.get("n") or 1) for r in series.rows if r.get("lf") is not None]
    rtt_max = [r["rttx"] for r in series.rows if r.get("rttx") is not None]
    lost_by_leg: dict[str, int] = {}
    for r in series.rows:
        if r.get("lc") is not None:
            lost_by_leg[r["leg"]] = max(lost_by_leg.get(r["leg"], 0), int(r["lc"]))
    if not ttff:
        ttff = _first_frames_from_samples(series, joined)
    people = sorted({r["participant"] for r in series.rows if r.get("participant")})
    start = min((r["t"] for r in series.rows), default=None)
    seen = experiences(series.rows, people, start, bin_s=series.bin_s)
    return Kpis(
        time_to_first_frame_s=sum(ttff) / len(ttff) if ttff else None,
        reconnect_count=n_reconnects,
        interruption_s=interruption,
        rtt_mean_ms=_weighted(rtt_w),
        rtt_max_ms=max(rtt_max) if rtt_max else None,
        loss_mean=_weighted(loss_w),
        packets_lost=sum(lost_by_leg.values()),
        experiences=tuple(seen),
        experience_score=call_score(seen),
    )


def _first_frames_from_samples(series: Series, joined: dict[str, datetime]) -> list[float]:
    """Time to first frame per participant, from the samples when no event gives it: from
    the moment there was someone to see (their own join, or the first other person's, if
    later) to their first receiving sample with frames (the page's, else the server's), to
    the sample's resolution."""
    out = []
    for who, at in joined.items():
        others = [t for p, t in joined.items() if p != who]
        if not others:
            continue
        since = max(at, min(others))
        firsts: dict[str, datetime] = {}
        for r in series.rows:
            if (r["participant"] == who and r.get("direction") == "subscribe"
                    and (r.get("fps") or 0) > 0 and r["t"] >= since):
                src = r.get("source") or "server"
                firsts[src] = min(firsts.get(src, r["t"]), r["t"])
        first = firsts.get("browser") or firsts.get("server")
        if first is not None:
            out.append((first - since).total_seconds())
    return out


def _weighted(pairs: Iterable[tuple[float, int]]) -> float | None:
    total = weight = 0.0
    for value, n in pairs:
        total += value * n
        weight += n
    return total / weight if weight else None


# --- figures -----------------------------------------------------------------------------

# name: (title, y-axis title, {(direction, source): field drawn}). Each leg is drawn in the
# field that follows its media: a publish leg's browser sent (bo) what the server received
# (bi); a subscribe leg's server forwarded (bo) what that browser received (bi).
CHARTS: dict[str, tuple[str, str, dict[tuple[str, str], str]]] = {
    "bitrate": ("Bitrate", "kbit/s", {("publish", "browser"): "bo", ("publish", "server"): "bi",
                                      ("subscribe", "server"): "bo",
                                      ("subscribe", "browser"): "bi"}),
    "rtt": ("Round-trip time", "ms", {(d, src): "rtt" for d in ("publish", "subscribe")
                                      for src in ("server", "browser")}),
    "loss": ("Packet loss", "fraction lost", {(d, src): "lf" for d in ("publish", "subscribe")
                                              for src in ("server", "browser")}),
    "fps": ("Frames per second", "fps", {(d, src): "fps" for d in ("publish", "subscribe")
                                         for src in ("server", "browser")}),
    "resolution": ("Resolution (height)", "pixels", {(d, src): "h"
                                                     for d in ("publish", "subscribe")
                                                     for src in ("server", "browser")}),
    "freezes": ("Video frozen (browser, cumulative)", "seconds",
                {("subscribe", "browser"): "fz"}),
    "jitter_buffer": ("Jitter-buffer delay (browser)", "ms", {("subscribe", "browser"): "jb"}),
    "concealed": ("Concealed audio (browser)", "% of samples",
                  {("subscribe", "browser"): "ca"}),
}
BROWSER_CHARTS = ("freezes", "jitter_buffer", "concealed")
BAND_COLOURS = {"fault": "rgba(214, 39, 40, 0.15)", "reconnect": "rgba(255, 127, 14, 0.18)",
                "server_restart": "rgba(31, 119, 180, 0.18)"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939")
VERB = {"publish": "sends", "subscribe": "receives"}
SMALL_MULTIPLES_ABOVE = 2  # participants; beyond, one row per participant


def _groups(columns: dict[Any, Any]) -> dict[tuple[str, str], str]:
    """A colour per (participant, direction), in a fixed order: the legend's entries."""
    keys = sorted({(who, rows[0].get("direction") or "publish")
                   for (who, _), (rows, _, _) in columns.items()})
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def build_figure(name: str, series: Series, events: Sequence[dict[str, Any]],
                 sel: Selection, *, _columns: dict[Any, Any] | None = None) -> go.Figure:
    """One chart: one legend entry per participant and direction ("ana sends", "bob
    receives"); the server's measurement drawn solid, the page's dotted, leg ids in the hover
    only. Beyond two participants, one row per participant (small multiples)."""
    title, y_title, drawn = CHARTS[name]
    columns = _columns if _columns is not None else _trace_columns(series)
    colours = _groups(columns)
    people = sorted({who for who, _ in columns})
    rows_n = len(people) if len(people) > SMALL_MULTIPLES_ABOVE else 1
    data: list[dict[str, Any]] = []
    shown: set[tuple[str, str]] = set()
    for (who, leg), (rows, x, ys) in columns.items():
        direction = rows[0].get("direction") or "publish"
        source = rows[0].get("source") or "server"
        f = drawn.get((direction, source))
        if f is None:
            continue
        y = ys[f]
        if np.isnan(y).all():
            continue
        group = (who, direction)
        by = "page" if source == "browser" else "server"
        trace: dict[str, Any] = {
            "type": "scatter", "mode": "lines", "x": x, "y": y, "connectgaps": False,
            "name": f"{who} {VERB.get(direction, direction)}",
            "legendgroup": f"{who}|{direction}", "showlegend": group not in shown,
            "line": {"color": colours.get(group, "#444"),
                     "dash": "dot" if source == "browser" else "solid"},
            "hovertemplate": f"{who} {VERB.get(direction, direction)} · {by} · leg {leg}"
                             "<br>%{y}<extra></extra>",
        }
        shown.add(group)
        if name == "resolution":
            trace["line"]["shape"] = "hv"
            # Forwarded legs carry the publisher's own stream: say so, not a rung.
            trace["text"] = [f"{r.get('w')}×{r.get('h')} · "
                             f"{'forwarded' if r.get('d') == 'forwarded' else r.get('q') or ''}"
                             for r in rows]
        if rows_n > 1:
            i = people.index(who) + 1
            trace["xaxis"], trace["yaxis"] = ("x", "y") if i == 1 else (f"x{i}", f"y{i}")
        data.append(trace)
    shapes, annotations = _fault_shapes(events, sel)
    if name in BROWSER_CHARTS:
        quiet = _no_browser_data(columns, people, sel, series.bin_s)
        if quiet:
            annotations.append({"text": "no browser data: " + ", ".join(quiet),
                                "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                                "showarrow": False, "font": {"color": "#666"}})
    layout: dict[str, Any] = {
        "title": {"text": title}, "height": 300 if rows_n == 1 else 140 * rows_n + 80,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 30},
        "shapes": shapes, "annotations": annotations, "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "x unified", "uirevision": f"{sel.room}|{name}",
    }
    x_range = [_naive(sel.start), _naive(sel.end)]
    for i in range(1, rows_n + 1):
        top = 1 - (i - 1) / rows_n
        domain = [max(0.0, top - 1 / rows_n + 0.04), top]
        suffix = "" if i == 1 else str(i)
        layout[f"xaxis{suffix}"] = {"type": "date", "range": x_range, "anchor": f"y{suffix}",
                                    **({"matches": "x"} if i > 1 else {})}
        yaxis: dict[str, Any] = {"title": {"text": people[i - 1] if rows_n > 1 else y_title},
                                 "rangemode": "tozero", "anchor": f"x{suffix}"}
        if rows_n > 1:
            yaxis["domain"] = domain
        if name == "loss":
            yaxis["tickformat"] = ".1%"
        layout[f"yaxis{suffix}"] = yaxis
    # Trace dicts are built here from known keys; plotly's per-property validation of a few
    # thousand points is most of the figure's build time and buys nothing.
    return go.Figure(data=data, layout=layout, _validate=False)


def _no_browser_data(columns: dict[Any, Any], people: list[str], sel: Selection,
                     bin_s: int) -> list[str]:
    """Participants whose page reported nothing in the range, or stopped well before its
    end (a live view): their browser charts stay empty, never zero."""
    last: dict[str, datetime] = {}
    for (who, leg), (rows, _, _) in columns.items():
        if str(leg).endswith("@browser"):
            t = rows[-1]["t"]
            last[who] = max(last.get(who, t), t)
    quiet = []
    for who in people:
        at = last.get(who)
        if at is None or (sel.end - at).total_seconds() > max(15.0, 3 * bin_s) and \
                any(r[-1]["t"] > at for (w, _), (r, _, _) in columns.items() if w == who):
            quiet.append(who)
    return quiet


def _trace_columns(series: Series) -> dict[Any, Any]:
    """Per trace: rows, x as datetime64 (UTC), and every drawn field as a float array.

    numpy arrays, not lists: plotly deep-copies trace data, and copying thousands of datetime
    objects was most of the figure time; arrays also serialise as compact binary. A gap of
    more than two bins (a page or a leg that stopped reporting) gets a NaN point, so the line
    breaks there instead of joining across it.
    """
    out: dict[Any, Any] = {}
    drawn = {f for _, _, fields in CHARTS.values() for f in fields.values()}
    gap_ms = 2 * series.bin_s * 1000
    idle = idle_legs(series.rows)
    for key, rows in sorted(series.traces().items()):
        if key in idle:
            continue  # the warm spare: a flat line of nothing (its leg is in the CSV/JSON)
        ms = [int(r["t"].timestamp() * 1000) for r in rows]
        x_ms: list[int] = []
        vals: dict[str, list[Any]] = {f: [] for f in drawn}
        for i, (t, r) in enumerate(zip(ms, rows, strict=True)):
            if i and t - ms[i - 1] > gap_ms:
                x_ms.append(ms[i - 1] + series.bin_s * 1000)
                for f in drawn:
                    vals[f].append(None)
            x_ms.append(t)
            for f in drawn:
                vals[f].append(r.get(f))
        x = np.array(x_ms, dtype="datetime64[ms]")
        ys = {f: np.array(v, dtype=float) for f, v in vals.items()}
        out[key] = (rows, x, ys)
    return out


def _naive(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


def _fault_label(b: dict[str, Any]) -> str:
    if b["kind"] == "reconnect":
        return f"reconnect {b.get('participant') or ''}".strip()
    return str(b.get("fault") or b["label"])


def _fault_shapes(events: Sequence[dict[str, Any]],
                  sel: Selection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fault and reconnect bands, each labelled with what it was ("loss 20% on bob")."""
    shapes: list[dict[str, Any]] = []
    for b in bands(events, sel.end):
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": _naive(b["start"]),
                       "x1": _naive(b["end"]), "y0": 0, "y1": 1, "line": {"width": 0},
                       "layer": "below",
                       "fillcolor": BAND_COLOURS.get(b["kind"], "rgba(128,128,128,0.15)"),
                       "label": {"text": _fault_label(b), "textposition": "top left",
                                 "font": {"size": 10, "color": "#7a1f1f"}}})
    return shapes, []


def build_timeline(events: Sequence[dict[str, Any]], sel: Selection) -> go.Figure:
    """Every call event on one strip (a row per participant, one for the room), faults and
    reconnects as labelled bands: the charts above share its time axis."""
    drawn = [e for e in events if e["kind"] in MARKER_KINDS or e["kind"] in BAND_PAIRS
             or e["kind"] == "fault_ended"][:MAX_MARKERS]
    trace: dict[str, Any] = {
        "type": "scatter", "mode": "markers", "showlegend": False, "name": "events",
        "x": [_naive(e["at"]) for e in drawn],
        "y": [e.get("participant") or "room" for e in drawn],
        "text": [_label(e) for e in drawn], "hovertemplate": "%{text}<extra></extra>",
        "marker": {"symbol": "diamond", "size": 9,
                   "color": ["#b42318" if "fault" in e["kind"] or "fail" in e["kind"]
                             else "#ff7f0e" if "reconnect" in e["kind"] else "#444"
                             for e in drawn]},
    }
    shapes, annotations = _fault_shapes(events, sel)
    layout = {"title": {"text": "Events"}, "height": 90 + 28 * len(set(trace["y"]) or {1}),
              "margin": {"l": 80, "r": 10, "t": 40, "b": 30},
              "xaxis": {"type": "date", "range": [_naive(sel.start), _naive(sel.end)]},
              "yaxis": {"type": "category"}, "shapes": shapes, "annotations": annotations,
              "uirevision": f"{sel.room}|timeline"}
    return go.Figure(data=[trace], layout=layout, _validate=False)


def build_figures(series: Series, events: Sequence[dict[str, Any]],
                  sel: Selection) -> dict[str, go.Figure]:
    columns = _trace_columns(series)
    figs = {name: build_figure(name, series, events, sel, _columns=columns) for name in CHARTS}
    figs["timeline"] = build_timeline(events, sel)
    return figs


# --- export --------------------------------------------------------------------------------

def to_csv(series: Series) -> str:
    buf = io.StringIO()
    cols = ["t", "room", "call_id", "participant", "leg", "direction", "kind",
            *(k for k in COLUMNS)]
    writer = csv.writer(buf)
    writer.writerow(["time", *cols[1:7], *(COLUMNS[k] for k in COLUMNS)])
    for row in series.rows:
        writer.writerow([row["t"].isoformat(), *(row.get(c) for c in cols[1:])])
    return buf.getvalue()


def to_json(sel: Selection, series: Series, events: Sequence[dict[str, Any]],
            kpis: Kpis | None = None) -> str:
    def rename(row: dict[str, Any]) -> dict[str, Any]:
        return {COLUMNS.get(k, k): v for k, v in row.items()}

    doc = {
        "selection": {"room": sel.room, "call_id": sel.call_id, "start": sel.start,
                      "end": sel.end, "participants": sel.participants},
        "bin_s": series.bin_s,
        "samples": [rename(r) for r in series.rows],
        "events": list(events),
        "kpis": asdict(kpis) if kpis is not None else None,
    }
    return json.dumps(doc, default=_json_default, indent=1)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


__all__ = [
    "CHARTS", "CallSummary", "Kpis", "RoomSummary", "Selection", "Series", "badge_text", "bands",
    "build_figure", "build_figures", "build_timeline", "choose_bin", "compute_kpis",
    "fault_text", "iter_samples", "list_calls", "list_rooms", "participants", "query_events",
    "query_samples", "room_range", "to_csv", "to_json",
]
