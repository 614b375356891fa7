"""Entry point: `streamlit run app.py`."""

from __future__ import annotations

import logging

import streamlit as st

from videochat.ui.state import get_settings

logging.basicConfig(
    level=get_settings().log_level,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

st.set_page_config(page_title="videochat", page_icon="🎥", layout="wide")

pages = [
    st.Page("pages/call.py", title="Call", icon="🎥", url_path="call", default=True),
    st.Page("pages/diagnostics.py", title="Diagnostics", icon="📈", url_path="diagnostics"),
    st.Page("pages/faults.py", title="Faults", icon="⚡", url_path="faults"),
    st.Page("pages/qa.py", title="QA sessions", icon="✅", url_path="qa"),
]
st.navigation(pages).run()
