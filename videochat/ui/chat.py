"""The in-call chat panel: message list and input.

Everything a participant typed (text and display names) is drawn with `st.text`, which renders
plain text: no Markdown, no HTML, so `<script>` or `**x**` show literally. Status lines built from
our own strings may use `st.caption`.

A message you sent stays marked "pending" until it comes back through the room's stream (the
hub has it): that is the acknowledgement that every participant can now see it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from videochat.chat.hub import ChatHub
from videochat.chat.message import ChatMessage
from videochat.chat.queue import ChatQueue
from videochat.exceptions import BackendUnavailable, RateLimited, ValidationError

logger = logging.getLogger(__name__)

SHOWN = 200  # newest messages drawn; older ones stay in the history


def _sent_key(room: str, participant_id: str) -> str:
    return f"chat_sent::{room}::{participant_id}"


def _timezone() -> tzinfo:
    try:
        name = st.context.timezone
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError, AttributeError, RuntimeError):
        return UTC


def render_chat(
    room: str, participant_id: str, display_name: str, hub: ChatHub, queue: ChatQueue
) -> None:
    """Draw the chat panel for one participant of `room`."""
    sent: dict[str, ChatMessage] = st.session_state.setdefault(
        _sent_key(room, participant_id), {}
    )
    st.subheader("Chat")
    box = st.container(height=380, border=True, autoscroll=True)
    key = f"chat_input::{room}"
    # Sent from the submit callback, which runs once per Enter: the widget's value itself stays
    # set through a run that a wake interrupts, and the next run would send it again (seen as
    # one message stored four times in the restart test).
    st.chat_input("Message", key=key, max_chars=queue.max_length, on_submit=_send,
                  args=(key, room, participant_id, display_name, queue, sent))
    problem = st.session_state.pop(_problem_key(room), None)
    if problem:
        (st.error if problem.startswith("!") else st.warning)(problem.lstrip("!"))
    if not queue.status()["redis_up"]:
        st.caption("Chat server unreachable: your messages wait here and are sent when it "
                   "returns.")

    messages = hub.messages(room)
    delivered = {m.id for m in messages}
    for mid in [mid for mid in sent if mid in delivered]:
        del sent[mid]  # acknowledged: it came back through the room's stream
    tz = _timezone()
    with box:
        if not messages and not sent:
            st.caption("No messages yet.")
        if len(messages) > SHOWN:
            st.caption(f"{len(messages) - SHOWN} older messages not shown.")
        for msg in messages[-SHOWN:]:
            _message(msg, own=msg.sender_id == participant_id, pending=False, tz=tz)
        for msg in sent.values():
            _message(msg, own=True, pending=True, tz=tz)


def _problem_key(room: str) -> str:
    return f"chat_problem::{room}"


def _send(key: str, room: str, participant_id: str, display_name: str, queue: ChatQueue,
          sent: dict[str, ChatMessage]) -> None:
    text = st.session_state.get(key)
    if not text:
        return
    problem = None
    try:
        msg = queue.send(room, participant_id, display_name, text)
        sent[msg.id] = msg
    except ValidationError as exc:
        problem = f"Message not sent: it {exc.rule}."
    except RateLimited as exc:
        problem = (f"Message not sent: at most {exc.limit} messages per {exc.window_s:g} s. "
                   "Wait a moment and retry.")
    except BackendUnavailable:
        problem = "!Message not sent: the chat server is unreachable and the outbox is full."
    if problem:
        st.session_state[_problem_key(room)] = problem


def _message(msg: ChatMessage, *, own: bool, pending: bool, tz: tzinfo) -> None:
    at = datetime.fromtimestamp(msg.sent_at, tz).strftime("%H:%M:%S")
    who = f"{msg.sender_name} (you)" if own else msg.sender_name
    status = " · pending…" if pending else ""
    with st.container(border=own):
        st.text(f"{who} · {at}{status}")
        st.text(msg.text)
