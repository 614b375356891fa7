"""The app process's services for the Streamlit pages: `videochat.runtime`, cached once."""

from __future__ import annotations

import gc

import streamlit as st
from streamlit_webrtc.eventloop import get_global_event_loop

from videochat.events import CallEvent
from videochat.runtime import AppRuntime, build_runtime
from videochat.ui import wake
from videochat.ui.cached import get_services, get_settings

__all__ = ["AppRuntime", "emit", "get_runtime", "get_services", "get_settings"]


@st.cache_resource
def get_runtime() -> AppRuntime:
    rt = build_runtime(get_settings(), get_services(), loop=get_global_event_loop(),
                       wake=wake.wake_sessions, session_alive=wake.session_alive)
    # Start-up objects (Streamlit, aiortc, our services: ~167k) out of the collector's view:
    # a full collection over them took 83 ms, a stall every chat message and frame then waits on.
    gc.collect()
    gc.freeze()
    return rt


def emit(event: CallEvent) -> None:
    get_runtime().bus.emit(event)
