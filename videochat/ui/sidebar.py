"""Sidebar badges: where each backend lives and whether it answers."""

from __future__ import annotations

import streamlit as st

from videochat.ui.state import AppRuntime


def backend_badges(rt: AppRuntime) -> None:
    with st.sidebar:
        for status in rt.services.status():
            icon = "🟢" if status.up else "🔴"
            text = f"{icon} {status.name}: {status.source}, {'up' if status.up else 'DOWN'}"
            st.caption(text if status.up else f"{text} — {status.detail}")
