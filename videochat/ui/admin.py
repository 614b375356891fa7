"""The admin-token gate shared by the Faults and QA pages (open in development mode)."""

from __future__ import annotations

import streamlit as st

from videochat.call.access import require_admin
from videochat.exceptions import AccessDenied
from videochat.ui.state import get_settings

TOKEN_KEY = "vc_admin_token"  # one token typed once opens both pages


def admitted(page: str) -> bool:
    settings = get_settings()
    token = st.query_params.get("token") or st.session_state.get(TOKEN_KEY)
    try:
        require_admin(settings, token, page)
        return True
    except AccessDenied as exc:
        st.error(f"Access denied: {exc}.")
        if settings.admin_token is not None:
            typed = st.text_input("Admin token", type="password")
            if typed:
                st.session_state[TOKEN_KEY] = typed
                st.rerun()
        return False
