"""Keep Streamlit on `st.navigation` (multipage v2) whatever URL a tab opens first.

Streamlit 1.67 still honours the legacy `pages/` folder until the main script has called
`st.navigation` once in the process: a first visit straight to `/call` would run
`pages/call.py` without `app.py` (no logging set-up, the legacy sidebar). Our page files call
`ensure_v2()` first; it switches the process to v2 and reruns through `app.py`, once.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def ensure_v2() -> None:
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
