"""The process's settings and backend clients, built once and shared by every page.

Kept apart from videochat/ui/state.py (which imports the whole media stack) so that the
server's start-up hook can start the embedded Valkey and SecantusDB (≈2 s, most of a fresh
start) while the rest of the app is still being imported.
"""

from __future__ import annotations

import streamlit as st

from videochat.backends.services import Services
from videochat.settings import Settings


@st.cache_resource
def get_settings() -> Settings:
    return Settings.load()


@st.cache_resource
def get_services() -> Services:
    return Services.from_settings(get_settings())
