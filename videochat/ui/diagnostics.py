"""The Diagnostics page (/diagnostics, /diagnostics?room=R): live and past media metrics.

Pickers (room, call, participants, time window) run with the page; the KPI row and the charts
live in one `st.fragment` that re-runs every second while the view is live, so a refresh never
re-runs the page. All queries and figures come from `videochat.metrics.diagnostics`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pymongo.errors
import streamlit as st

from videochat.clocks import utcnow
from videochat.exceptions import ValidationError
from videochat.metrics import diagnostics as diag
from videochat.qa.report import render_call_html
from videochat.ui.state import get_services

logger = logging.getLogger(__name__)

WINDOWS: dict[str, timedelta | None] = {
    "Last 2 minutes": timedelta(minutes=2),
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(hours=24),
    "Whole room / call": None,
}
ALL_CALLS = "(all calls)"
CHART_ORDER = ("bitrate", "rtt", "loss", "fps", "resolution", "freezes", "jitter_buffer",
               "concealed")
MAX_POINTS = 300


def render() -> None:
    st.title("Diagnostics")
    try:
        db = get_services().db
        rooms = diag.list_rooms(db)
    except pymongo.errors.PyMongoError as exc:
        st.error(f"MongoDB is unreachable, so no metrics can be shown right now: "
                 f"{str(exc).split(',')[0]}")
        return
    asked = st.query_params.get("room")
    names = [r.room for r in rooms]
    if asked and asked not in names:
        _empty_state(asked, rooms)
        return
    if not rooms:
        st.info("No metrics recorded yet. Start a call on the Call page: each participant's "
                "media appears here within a couple of seconds.")
        return
    by_name = {r.room: r for r in rooms}
    room = st.selectbox(
        "Room", names, index=names.index(asked) if asked else 0,
        format_func=lambda n: f"{n} {'🟢 live' if by_name[n].live else '(past)'}",
        key="diag_room",
    )
    if room != asked:
        st.query_params["room"] = room
    summary = by_name[room]
    calls = diag.list_calls(db, room)
    cols = st.columns([2, 2, 3])
    call_labels = [ALL_CALLS] + [f"{c.call_id} {'🟢' if c.live else ''}".strip() for c in calls]
    call_pick = cols[0].selectbox("Call", call_labels, key=f"diag_call_{room}")
    call_id = None if call_pick == ALL_CALLS else call_pick.split(" ")[0]
    window_label = cols[1].selectbox(
        "Time window", list(WINDOWS), index=0 if summary.live else len(WINDOWS) - 1,
        key=f"diag_window_{room}")
    people = diag.participants(db, room, call_id=call_id)
    chosen = cols[2].multiselect("Participants", people, default=people,
                                 key=f"diag_people_{room}_{call_id}")
    live = summary.live and WINDOWS[window_label] is not None
    live = st.toggle("Live updates (every second)", value=live, disabled=not summary.live,
                     key=f"diag_live_{room}")
    view = {"room": room, "call_id": call_id, "window": WINDOWS[window_label],
            "participants": tuple(chosen), "live": live}
    _live_view(view)
    _downloads(view)


def _empty_state(asked: str, rooms: list[diag.RoomSummary]) -> None:
    st.warning(f"No metrics for room **{asked}**: nobody has joined it, or its data is older "
               f"than the retention period.")
    if rooms:
        st.write("Rooms with metrics:")
        for r in rooms[:20]:
            st.markdown(f"- [{r.room}](?room={r.room}) {'🟢 live' if r.live else ''}")
    else:
        st.info("No room has metrics yet.")


def _selection(view: dict[str, Any]) -> diag.Selection | None:
    db = get_services().db
    span = diag.room_range(db, view["room"], view["call_id"])
    if span is None:
        return None
    first, last = span
    window: timedelta | None = view["window"]
    # A live view ends now; a past one ends just after its last sample.
    end = utcnow() if view["live"] else last + timedelta(seconds=1)
    start = first if window is None else end - window
    end = max(end, start + timedelta(seconds=10))
    return diag.Selection(room=view["room"], start=start, end=end, call_id=view["call_id"],
                          participants=view["participants"] or None)


def _live_view(view: dict[str, Any]) -> None:
    @st.fragment(run_every=1.0 if view["live"] else None)
    def charts() -> None:
        try:
            sel = _selection(view)
            if sel is None:
                st.info("This room has no samples for the chosen call.")
                return
            db = get_services().db
            series = diag.query_samples(db, sel, max_points=MAX_POINTS)
            events = diag.query_events(db, sel)
        except pymongo.errors.PyMongoError as exc:
            st.warning(f"MongoDB did not answer; showing nothing until it does: "
                       f"{str(exc).split(',')[0]}")
            return
        except ValidationError as exc:
            st.error(str(exc))
            return
        kpis = diag.compute_kpis(series, events, sel.end)
        _kpi_row(kpis)
        _experience_table(kpis)
        if not series.rows:
            st.info("No samples in this window yet." + (" Waiting for media…" if view["live"]
                                                         else ""))
        figures = diag.build_figures(series, events, sel)
        st.caption(f"{_fmt_time(sel.start)} → {_fmt_time(sel.end)} UTC · one point per "
                   f"{series.bin_s} s · {len(series.rows)} points · {len(events)} events"
                   + (" · live" if view["live"] else ""))
        st.caption("Solid: measured by the server · dotted: measured by the participant's "
                   "page. Hover a line for its leg.")
        st.plotly_chart(figures["timeline"], key="diag_chart_timeline",
                        config={"displaylogo": False})
        left, right = st.columns(2)
        for i, name in enumerate(CHART_ORDER):
            with left if i % 2 == 0 else right:
                st.plotly_chart(figures[name], key=f"diag_chart_{name}",
                                config={"displaylogo": False})

    charts()


def _kpi_row(k: diag.Kpis) -> None:
    cols = st.columns(7)
    cols[6].metric("Experience", "–" if k.experience_score is None
                   else f"{k.experience_score:.2f}",
                   help="MOS-like score, 1 to 4.5, of what the participants received: "
                        "RTT, jitter and loss through a reduced E-model, minus 4 x the share of "
                        "time frozen (videochat/metrics/experience.py)")
    cols[0].metric("Time to first frame",
                   "–" if k.time_to_first_frame_s is None else f"{k.time_to_first_frame_s:.1f} s")
    cols[1].metric("Reconnects", k.reconnect_count)
    cols[2].metric("Interruption", f"{k.interruption_s:.1f} s")
    cols[3].metric("Mean RTT", "–" if k.rtt_mean_ms is None else f"{k.rtt_mean_ms:.0f} ms")
    cols[4].metric("Max RTT", "–" if k.rtt_max_ms is None else f"{k.rtt_max_ms:.0f} ms")
    cols[5].metric("Loss", "–" if k.loss_mean is None else f"{k.loss_mean:.1%}",
                   help=f"mean loss fraction; {k.packets_lost} packets lost in total")


def _experience_table(k: diag.Kpis) -> None:
    """What each person saw, from their own page; "no browser data" where it sent nothing."""
    if not k.experiences:
        return
    rows = [{
        "participant": e.participant,
        "freezes": e.text(e.freeze_count, "d"),
        "frozen": e.text(e.freeze_s, ".1f") + (" s" if e.freeze_s is not None else ""),
        "longest freeze": e.text(e.longest_freeze_s, ".2f")
        + (" s" if e.longest_freeze_s is not None else ""),
        "jitter buffer": e.text(e.jitter_buffer_ms, ".0f")
        + (" ms" if e.jitter_buffer_ms is not None else ""),
        "concealed audio": e.text(e.concealed_pct, ".1f")
        + (" %" if e.concealed_pct is not None else ""),
        "experience (1–4.5)": "–" if e.score is None else f"{e.score:.2f}",
    } for e in k.experiences]
    st.dataframe(rows, hide_index=True, key="diag_experience")


def _downloads(view: dict[str, Any]) -> None:
    def gather() -> tuple[diag.Selection, diag.Series, list[dict[str, Any]]] | None:
        sel = _selection(view)
        if sel is None:
            return None
        db = get_services().db
        return sel, diag.query_samples(db, sel, max_points=MAX_POINTS * 4), \
            diag.query_events(db, sel)

    def csv_data() -> str:
        got = gather()
        return "" if got is None else diag.to_csv(got[1])

    def json_data() -> str:
        got = gather()
        if got is None:
            return "{}"
        sel, series, events = got
        return diag.to_json(sel, series, events, diag.compute_kpis(series, events, sel.end))

    def html_data() -> str:
        got = gather()
        if got is None:
            return "<p>No samples for this call.</p>"
        sel, series, events = got
        return render_call_html(sel, series, events, diag.compute_kpis(series, events, sel.end))

    stem = f"diagnostics-{view['room']}"
    cols = st.columns(4)
    cols[2].download_button("Download HTML report", html_data, file_name=f"{stem}.html",
                            mime="text/html", key="diag_html", on_click="ignore",
                            help="Charts, events and KPIs of this selection in one "
                                 "self-contained file")
    cols[0].download_button("Download CSV", csv_data, file_name=f"{stem}.csv", mime="text/csv",
                            key="diag_csv", on_click="ignore")
    cols[1].download_button("Download JSON", json_data, file_name=f"{stem}.json",
                            mime="application/json", key="diag_json", on_click="ignore")


def _fmt_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")
