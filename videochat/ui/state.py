"""The app process's services for the Streamlit pages: `videochat.runtime`, cached once."""

from __future__ import annotations

import streamlit as st
from streamlit_webrtc.eventloop import get_global_event_loop

from videochat.events import CallEvent
from videochat.runtime import AppRuntime, build_runtime
from videochat.ui import wake, webrtc
from videochat.ui.cached import get_services, get_settings

__all__ = ["AppRuntime", "emit", "get_runtime", "get_services", "get_settings"]


@st.cache_resource
def get_runtime() -> AppRuntime:
    # Built at start-up by videochat/ui/server.py, which then freezes the start-up objects out
    # of the collector's view; a page run builds it only where that hook did not run.
    rt = build_runtime(get_settings(), get_services(), loop=get_global_event_loop(),
                       wake=wake.wake_sessions, session_alive=wake.session_alive)
    webrtc.serve_browser_stats(rt.browser_stats, rt.legs)
    return rt


def emit(event: CallEvent) -> None:
    get_runtime().bus.emit(event)
