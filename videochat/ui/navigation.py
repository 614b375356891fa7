"""Keep Streamlit on `st.navigation` (multipage v2) whatever URL a tab opens first.

Streamlit 1.67 still honours the legacy `pages/` folder until the main script has called
`st.navigation` once in the process: a first visit straight to `/call` runs `pages/call.py`
under a legacy navigation built from the folder, without `app.py`. Our page files call
`ensure_v2()` first; it switches the process to v2 and reruns through `app.py`.

Two things lost a link's query string on a fresh process (an empty join form in 3 of 5 fresh
starts with two links opened at once, issue 13), both handled here:
- The rerun is decided per *run*, not by the process-wide flag: the second tab's run may have
  started under the legacy navigation after the first tab flipped the flag; rendered as is, its
  frontend later rewrote the URL without the query.
- After the switch, the frontend sends one more rerun with an *empty* query string although the
  URL still holds it (seen in 6 of 6 fresh starts): the link is kept in the session for a few
  seconds and put back on such a run.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

_PENDING_KEY = "vc_link_before_v2"
# The stray empty rerun follows the switch within a second or two; a bare URL opened later is
# the person's own choice.
KEEP_LINK_S = 15.0


def _legacy_run() -> bool:
    """Whether this script run was started under the `pages/` folder's navigation: there the
    main script itself is a page, while our v2 navigation (app.py) lists only the pages."""
    ctx = get_script_run_ctx()
    if ctx is None:
        return False
    main = str(ctx.pages_manager.main_script_path)
    return any(str(p.get("script_path", "")) == main
               for p in ctx.pages_manager.get_pages().values())


def ensure_v2() -> None:
    PagesManager.uses_pages_directory = False
    ctx = get_script_run_ctx()
    query = ctx.query_string if ctx is not None else ""
    if _legacy_run():
        if query:
            st.session_state[_PENDING_KEY] = (query, time.monotonic())
        st.rerun()  # through app.py, with this run's query string
    pending = st.session_state.get(_PENDING_KEY)
    if pending is None:
        return
    kept, since = pending
    if time.monotonic() - since > KEEP_LINK_S or (query and query != kept):
        del st.session_state[_PENDING_KEY]
    elif not query:
        st.query_params.from_dict(dict(parse_qsl(kept)))
