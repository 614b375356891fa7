"""The Faults page (/faults): start a fault or preset on a room/participant, watch, stop, clear.

Everything goes through `FaultControl`, the same Redis command stream as the command line, so
the page works whichever app process hosts the call. Outside development mode the page needs
the admin token (``?token=…`` in the URL or typed in once per session).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import streamlit as st

from videochat.call.presence import Presence
from videochat.exceptions import VideoChatError
from videochat.faults.control import ActiveRecord, FaultControl, control_from_services
from videochat.faults.kinds import (
    BACKEND_KINDS,
    DIRECTIONS,
    FAULT_KINDS,
    KIND_LABELS,
    NETWORK_KINDS,
)
from videochat.faults.model import PRESETS, Fault, expand_preset, parse_fault
from videochat.metrics.live import live_effects
from videochat.ui.admin import admitted
from videochat.ui.state import get_services

logger = logging.getLogger(__name__)

WHOLE_ROOM = "(whole room)"


def render() -> None:
    st.title("Fault injection")
    if not admitted("Faults"):
        return
    try:
        services = get_services()
        control = control_from_services(services, by="page")
    except VideoChatError as exc:
        st.error(f"Backends unavailable: {exc}")
        return
    listeners = _safe(control.listeners, [])
    if listeners:
        st.caption(f"{len(listeners)} app process(es) listening: {', '.join(listeners)}")
    else:
        st.warning("No app process is listening for fault commands right now: faults are "
                   "recorded and apply to media processes that start before they end.")
    _form(control, Presence(services.redis))
    _active_section(control, services.db)


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - Redis down must not break the page
        st.error(f"Redis unavailable: {exc}")
        return default


# --- new fault ---------------------------------------------------------------------------------

def _form(control: FaultControl, presence: Presence) -> None:
    st.subheader("Start a fault")
    rooms = _safe(presence.rooms, [])
    col_room, col_who = st.columns(2)
    with col_room:
        choices = [*rooms, "other…"]
        picked = st.selectbox("Room", choices, key="f_room_pick")
        room = picked if picked != "other…" else st.text_input("Room name", key="f_room_typed")
    with col_who:
        names = sorted({p.name for p in _safe(lambda: presence.participants(room), {}).values()}
                       ) if room else []
        who = st.selectbox("Participant", [WHOLE_ROOM, *names], key="f_who")
    participant = None if who == WHOLE_ROOM else who

    mode = st.radio("What", ["Fault", "Preset"], horizontal=True, key="f_mode")
    params: dict[str, Any] = {}
    if mode == "Preset":
        preset = st.selectbox("Preset", list(PRESETS), key="f_preset",
                              format_func=lambda n: f"{n} — {PRESETS[n].description}")
        kind = None
    else:
        preset = None
        kind = st.selectbox("Kind", FAULT_KINDS, key="f_kind",
                            format_func=lambda k: KIND_LABELS.get(k, k))
        params = _params(kind)
    cols = st.columns(2)
    with cols[0]:
        direction = None
        if kind in NETWORK_KINDS or mode == "Preset":
            direction = st.radio("Direction", list(DIRECTIONS), horizontal=True,
                                 key="f_dir",
                                 help="up: what the participant sends; down: what they receive")
    with cols[1]:
        duration = None
        if kind != "kill":
            duration = st.number_input("Duration (s)", min_value=1.0, max_value=3600.0,
                                       value=30.0, step=5.0, key="f_duration")

    if st.button("Start", type="primary", key="f_start"):
        try:
            faults = _build(kind, preset, room, participant, params, direction, duration)
            sent = control.inject_many(faults)
            st.success("Started: " + "; ".join(f"{f.describe()} (id {f.id})" for f in sent))
        except VideoChatError as exc:
            st.error(str(exc))
        except Exception as exc:  # noqa: BLE001 - Redis/Mongo errors shown, not raised
            st.error(f"Could not send the fault: {exc}")


def _params(kind: str) -> dict[str, Any]:
    if kind == "loss":
        return {"percent": st.slider("Loss %", 1, 100, 20, key="f_percent")}
    if kind == "latency":
        c1, c2 = st.columns(2)
        return {"ms": c1.number_input("Delay (ms)", 0, 10_000, 200, 50, key="f_ms"),
                "jitter_ms": c2.number_input("Jitter ± (ms)", 0, 5_000, 0, 10, key="f_jit")}
    if kind == "bandwidth":
        return {"kbps": st.number_input("Cap (kbps)", 8, 1_000_000, 300, 50, key="f_kbps")}
    if kind in BACKEND_KINDS:
        st.caption("Makes the backend really unavailable (embedded: process paused; Redis URL: "
                   "CLIENT PAUSE; MongoDB URL: not supported).")
    return {}


def _build(kind: str | None, preset: str | None, room: str, participant: str | None,
           params: dict[str, Any], direction: str | None, duration: float | None
           ) -> list[Fault]:
    if preset is not None:
        return expand_preset(preset, room or "*", participant, duration,
                             direction if direction != "both" else None)  # type: ignore[arg-type]
    data: dict[str, Any] = {"kind": kind, **params}
    if kind not in BACKEND_KINDS:
        data["room"] = room
        data["participant"] = participant
    if direction is not None:
        data["direction"] = direction
    if duration is not None:
        data["duration_s"] = duration
    return [parse_fault(data)]


# --- active faults -----------------------------------------------------------------------------

def _effects(db: Any, fault: Fault) -> str:
    """The target's media right now (metrics/live.py), beside the fault that acts on it."""
    if fault.kind in BACKEND_KINDS or fault.room == "*":
        return ""
    try:
        effects = live_effects(db, fault.room, fault.participant)
    except Exception as exc:  # noqa: BLE001 - MongoDB down: say so, keep the page
        return f"  \nEffect now: unknown (MongoDB: {str(exc)[:80]})"
    if not effects:
        return "  \nEffect now: no media samples from the target in the last 5 s"
    # Display names may hold markdown characters (_ . -): keep them literal.
    return "".join("  \n📈 " + "".join("\\" + c if c in "\\`*_[]()#+-.!|<>" else c
                                        for c in e.text()) for e in effects)


def _active_section(control: FaultControl, db: Any = None) -> None:
    st.subheader("Active faults")
    records: list[ActiveRecord] = _safe(control.active, [])

    @st.fragment(run_every=1.0 if records else None)
    def table() -> None:
        now = time.time()
        current: list[ActiveRecord] = _safe(control.active, [])
        if not current:
            st.info("No active faults.")
            if records:
                st.rerun()  # the last one ended: stop ticking
            return
        c_all, c_room = st.columns(2)
        if c_all.button("Clear all", type="primary", key="f_clear_all"):
            _act(lambda: control.clear(), "cleared")
            st.rerun()
        rooms = sorted({r.fault.room for r in current})
        room = c_room.selectbox("Clear one room", rooms, key="f_clear_room_pick")
        if c_room.button("Clear room", key="f_clear_room"):
            _act(lambda: control.clear(room), f"cleared room {room}")
            st.rerun()
        for r in current:
            f = r.fault
            c1, c2, c3 = st.columns([6, 2, 1])
            params = ", ".join(f"{k}={v}" for k, v in f.params().items())
            c1.markdown(f"**{KIND_LABELS.get(f.kind, f.kind)}** on {f.target}"
                        + (f" — {params}" if params else "")
                        + (f" · preset {f.preset}" if f.preset else "")
                        + f"  \n`{f.id}` · applied by {', '.join(r.applied_by) or 'nobody yet'}"
                        + (_effects(db, f) if db is not None else ""))
            left = r.remaining(now)
            c2.metric("Left", f"{left:.0f} s")
            c2.progress(min(1.0, left / max(r.until - r.since, 0.001)))
            if c3.button("Stop", key=f"f_stop_{f.id}"):
                _act(lambda f=f: control.stop(f.id), f"stopped {f.id}")
                st.rerun()

    table()


def _act(fn: Any, done: str) -> None:
    try:
        fn()
        st.toast(done)
    except Exception as exc:  # noqa: BLE001
        st.error(f"Failed: {exc}")
