"""The Call page: join by link, publish once, see and hear everyone else, leave."""

from __future__ import annotations

import logging
import time

import streamlit as st
from streamlit_webrtc.eventloop import get_global_event_loop

from videochat.bots.host import add_bot
from videochat.call.seats import Seats
from videochat.exceptions import VideoChatError
from videochat.media.legs import MediaLeg
from videochat.media.participant import (
    NAME_RULE,
    ROOM_RULE,
    Participant,
    Slot,
)
from videochat.ui import login, wake, webrtc
from videochat.ui.chat import render_chat
from videochat.ui.precall import render_precall
from videochat.ui.sidebar import backend_badges
from videochat.ui.state import AppRuntime, get_runtime

logger = logging.getLogger(__name__)

COLUMNS = 2
SESSION_KEY = "vc_participant"
REJOIN_KEY = "vc_rejoin"
REFUSED_KEY = "vc_rejoin_refused"  # shown above the join form until a join succeeds


def render() -> None:
    started = time.perf_counter()
    try:
        _render()
    finally:
        logger.debug("call page run took %.0f ms", (time.perf_counter() - started) * 1000)


def _render() -> None:
    rt = get_runtime()
    webrtc.install()
    backend_badges(rt)
    me = _current_participant(rt)
    qp = st.query_params
    refused = None
    if me is None and qp.get("rejoin"):
        # A tab that was in a call before the server restarted (videochat/ui/restart_watch.js
        # reloaded it with its token): its own seat back, no click.
        me, refused = _rejoin(rt, qp.get("rejoin", ""))
    if me is None and refused is None and qp.get("join") == "1" and qp.get("room") \
            and qp.get("name"):
        # Join by link within this same run: no extra rerun before the call's components
        # are sent to the browser (each rerun costs a round trip on the join path).
        me = _join(rt, qp.get("room", ""), qp.get("name", ""))
    if me is None:
        _join_form(rt)
        return
    if qp.get("rejoin"):
        # Seated: the token leaves the address bar (a copied link must not carry someone's
        # seat). Checked on every run: the first link's query can be put back by
        # videochat/ui/navigation.py on a stray empty rerun.
        qp.pop("rejoin", None)
    _call(rt, me)


def _seats(rt: AppRuntime) -> Seats:
    assert rt.seats is not None, "the runtime builds its seats"
    return rt.seats


def _current_participant(rt: AppRuntime) -> Participant | None:
    me = rt.registry.find(st.session_state.get(SESSION_KEY))
    if me is not None:
        if me.session_id != wake.current_session_id():
            me.session_id = wake.current_session_id()  # the tab reconnected under a new session
        return me
    if st.session_state.get(SESSION_KEY):
        # We were in a call but this process no longer seats us (grace expired): our seat back
        # by token if it is still live, else the same room under the same name, no click.
        st.session_state.pop(SESSION_KEY)
        token = st.session_state.get(REJOIN_KEY)
        if token:
            try:
                return _seated(rt, _seats(rt).rejoin(token, wake.current_session_id()), "")
            except VideoChatError as exc:
                logger.info("rejoin by the session's token refused: %s", exc)
        room, name = st.session_state.get("vc_room"), st.session_state.get("vc_name")
        if room and name:
            return _join(rt, room, name, st.session_state.get("vc_passcode", ""))
    return None


def _rejoin(rt: AppRuntime, token: str) -> tuple[Participant | None, str | None]:
    """(participant, None) when the token's seat is given back, (None, why) when refused."""
    try:
        me = _seats(rt).rejoin(token, wake.current_session_id())
    except VideoChatError as exc:
        # Never a silent empty form: say why, and pre-fill the form with the link's room and
        # name (the token's, when it could be read).
        st.session_state[REFUSED_KEY] = f"Could not rejoin the call: {exc}"
        st.query_params.pop("rejoin", None)
        st.query_params.pop("join", None)
        return None, str(exc)
    # The page keeps the token in the tab's own storage (restart_watch.js), not in the URL.
    return _seated(rt, me, st.session_state.get("vc_passcode", "")), None


def _join(rt: AppRuntime, room: str, name: str, passcode: str = "") -> Participant | None:
    try:
        me = _seats(rt).join(room, name, wake.current_session_id(), passcode)
    except VideoChatError as exc:
        st.error(str(exc))
        return None
    st.session_state["vc_name"] = name
    return _seated(rt, me, passcode)


def _seated(rt: AppRuntime, me: Participant, passcode: str) -> Participant:
    st.session_state.pop(REFUSED_KEY, None)
    st.session_state[SESSION_KEY] = me.id
    st.session_state[REJOIN_KEY] = _seats(rt).token_for(me)
    st.session_state["vc_room"] = me.room
    st.session_state.setdefault("vc_name", me.name)
    st.session_state["vc_passcode"] = passcode  # to rejoin by itself after a lost session
    return me


def _join_form(rt: AppRuntime) -> None:
    qp = st.query_params
    room, name = qp.get("room", ""), qp.get("name", "")
    name = name or login.signed_in_name()  # "" unless sign-in is on and someone is signed in
    st.title("Join a call")
    if st.session_state.get(REFUSED_KEY):
        st.error(st.session_state[REFUSED_KEY])
    with st.form("join"):
        name = st.text_input("Your name", value=name, max_chars=32, help=NAME_RULE)
        room = st.text_input("Room", value=room, max_chars=40, help=ROOM_RULE)
        passcode = st.text_input(
            "Passcode (optional)", type="password", max_chars=64,
            help="Needed if the room has one; opening a new room with a passcode protects it.")
        submitted = st.form_submit_button("Join", type="primary")
    if submitted and _join(rt, room.strip(), name.strip(), passcode) is not None:
        st.query_params.update({"room": room.strip(), "name": name.strip()})
        st.rerun()
    render_precall(rt)


def _call(rt: AppRuntime, me: Participant) -> None:
    room = rt.registry.room_of(me)
    head = st.container()
    with head:
        left, right = st.columns([4, 1])
        left.subheader(f"Room {me.room}")
        left.caption(f"You are **{me.name}** · share: `?room={me.room}&join=1` "
                     "· no camera or permission denied? you still see and hear the others")
        if right.button("Leave", type="primary", width="stretch"):
            _leave(rt, me)
            return
        if right.button("Add a bot", width="stretch",
                        help="A server-side participant with a moving test pattern and a tone"):
            try:
                add_bot(rt, me.room, "bot")
            except VideoChatError as exc:
                st.error(str(exc))
    webrtc.autostart_companion(me, st.session_state.get(REJOIN_KEY, ""))
    grid, side = st.columns([3, 2], gap="medium")
    with grid:
        _grid(rt, me)
    with side:
        rt.watch_chat(me.room)
        render_chat(me.room, me.id, me.name, rt.chat.hub, rt.chat.queue)
    if rt.supervisor.gave_up(me.id):
        st.error("Your connection could not be restored. Check your network, then retry.")
        if st.button("Retry now"):
            rt.supervisor.retry(me.id)
            st.rerun()
    if room is not None and len(room.participants) == 1:
        st.info("You are alone in this room. Share the link to invite someone.")


def _grid(rt: AppRuntime, me: Participant) -> None:
    cells = []
    for _ in range((rt.settings.max_participants + COLUMNS - 1) // COLUMNS):
        cells.extend(st.columns(COLUMNS))
    # Cell 0 is me; cell i+1 is slot i. Fixed positions keep every component mounted (and its
    # connection up) across reruns.
    with cells[0]:
        st.markdown(_own_title(rt, me))
        with webrtc.leg_container(webrtc.publish_key(me)):
            ctx = webrtc.publish(me, rt.settings)
        _register_leg(rt, me, ctx, "publish", None)
        _media_switches(rt, me)
    for slot in _visible_slots(rt, me):
        if slot.index + 1 >= len(cells):
            break
        with cells[slot.index + 1]:
            st.markdown(_tile_title(rt, me, slot))
            with webrtc.leg_container(webrtc.slot_key(me, slot)):
                ctx = webrtc.subscribe(me, slot, rt.settings)
            _register_leg(rt, me, ctx, "subscribe", slot)


def _media_switches(rt: AppRuntime, me: Participant) -> None:
    cam, mic = st.columns(2)
    # Off: the others see a black tile or hear silence, and their tile of you says so.
    camera_on = cam.toggle("Camera", value=me.camera_on, key="vc-camera-on")
    mic_on = mic.toggle("Mic", value=me.mic_on, key="vc-mic-on")
    rt.registry.set_media(me.id, camera_on=camera_on, mic_on=mic_on)


def _visible_slots(rt: AppRuntime, me: Participant) -> list[Slot]:
    """Every bound slot, plus one warm spare once the last join has settled."""
    out = []
    spare_allowed = time.monotonic() >= me.spare_not_before
    for slot in me.slots:
        if slot.publisher_id is not None and rt.registry.find(slot.publisher_id) is not None:
            out.append(slot)
        elif spare_allowed:
            out.append(slot)
            spare_allowed = False
    return out


QUALITY_ICON = {"excellent": "🟢", "good": "🟢", "poor": "🟠", "lost": "🔴"}


def _own_title(rt: AppRuntime, me: Participant) -> str:
    state = rt.supervisor.reconnect_state(me.id)
    title = f"**{_md_text(me.name)}** (you)"
    if rt.supervisor.gave_up(me.id):
        return f"{title} · 🔴 could not reconnect"
    if state is not None and state.value != "connected":
        return f"{title} · 🟡 reconnecting…"
    return title


def _tile_title(rt: AppRuntime, me: Participant, slot: Slot) -> str:
    """One line per tile (a fixed element count keeps the components mounted)."""
    publisher = rt.registry.find(slot.publisher_id)
    if publisher is None:
        # The warm spare connection: it is someone's tile only once someone joins.
        room = rt.registry.room_of(me)
        alone = room is None or len(room.participants) <= 1
        return "_waiting for someone to join…_" if alone else "_free seat for the next person_"
    name = _md_text(publisher.name)
    if publisher.state == "reconnecting":
        return f"**{name}** · 🟡 reconnecting…"
    leg_id = _leg_id(me, slot)
    parts = [f"**{name}**"]
    if not publisher.mic_on:
        parts.append("🔇 muted")
    if not publisher.camera_on:
        parts.append("📷 camera off")
    quality = rt.supervisor.connection_quality(leg_id)
    level = rt.supervisor.quality_of(leg_id)
    sample = rt.sampler.latest(me.room).get(leg_id)
    if quality is not None:
        parts.append(f"{QUALITY_ICON.get(quality.value, '')} {quality.value}")
    delivery = rt.supervisor.delivery_of(leg_id)
    if delivery == "forwarded":
        parts.append("forwarded")  # the publisher's own stream, not re-encoded
    elif level is not None:
        parts.append(level)
    if sample is not None and sample.rtt_ms is not None:
        parts.append(f"RTT {sample.rtt_ms:.0f} ms")
    view = rt.supervisor.view(leg_id)
    if view is not None and view.paused:
        parts.append("video paused (poor network), audio continues")
    return " · ".join(parts)


def _md_text(text: str) -> str:
    # Display names are validated (letters, digits, space . - _ '), but keep markdown inert.
    return "".join("\\" + c if c in "\\`*_[]()#+-.!|<>" else c for c in text)


def _leg_id(me: Participant, slot: Slot | None) -> str:
    return f"{me.id[:12]}:{'pub' if slot is None else f'sub{slot.index}'}"


def _register_leg(rt: AppRuntime, me: Participant, ctx: object, direction: str,
                  slot: Slot | None) -> None:
    pc = webrtc.peer_connection(ctx)  # type: ignore[arg-type]
    if pc is None or rt.legs.known(pc):
        return
    leg_id = _leg_id(me, slot)
    room = rt.registry.room_of(me)
    logger.debug("leg %s registered (worker created)", leg_id)
    rt.legs.register(MediaLeg(
        leg_id=leg_id, room=me.room, participant=me.name, participant_id=me.id,
        direction="publish" if direction == "publish" else "subscribe", pc=pc,
        loop=get_global_event_loop(), call_id=room.call_id if room else None,
        slot_index=None if slot is None else slot.index,
    ))


def _leave(rt: AppRuntime, me: Participant) -> None:
    rt.registry.leave(me.id)
    webrtc.forget_streamers(me.id)
    for key in [k for k in st.session_state if str(k).startswith(("pub-", "sub-"))]:
        ctx = st.session_state[key]
        webrtc.stop_worker(ctx)
        del st.session_state[key]
    st.session_state.pop(SESSION_KEY, None)
    st.session_state.pop(REJOIN_KEY, None)
    st.session_state.pop("vc_room", None)
    st.query_params.pop("join", None)
    st.query_params.pop("rejoin", None)
    st.rerun()
