"""Keep Streamlit on `st.navigation` (multipage v2) whatever URL a tab opens first.

Streamlit 1.67 still honours the legacy `pages/` folder until the main script has called
`st.navigation` once in the process: a first visit straight to `/call` runs `pages/call.py`
under a legacy navigation built from the folder, without `app.py`. Our page files call
`ensure_v2()` first; it switches the process to v2 and reruns through `app.py`.

Two things lost a link's query string on a fresh process (an empty join form in 3 of 5 fresh
starts with two links opened at once, issue 13):
- With two tabs at once, the second tab's run could start under the legacy navigation after
  the first tab had flipped the flag; rendered as is, its frontend later rewrote the URL without
  the query. The server's start-up hook now switches to v2 before any tab connects
  (`use_v2_from_start`, from videochat/ui/server.py), so no run is legacy; `ensure_v2` remains
  for a script run without that hook (AppTest).
- Soon after a session's first run, the frontend sends one more rerun with an *empty* query
  string although the URL still holds it (seen in 6 of 6 fresh starts, and on tabs that
  reconnect to a restarted server, where it showed the empty form): the session's first query
  is kept for a few seconds and put back on such a run.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

import streamlit as st

from videochat.compat import streamlit as compat_streamlit

_PENDING_KEY = "vc_first_link"
_SEEN_KEY = "vc_session_seen"
# The stray empty rerun follows a session's first run within a second or two; a bare URL
# opened later is the person's own choice.
KEEP_LINK_S = 15.0


def use_v2_from_start() -> None:
    """Called at server start-up (videochat/ui/server.py), before any tab connects: no run
    ever starts under the legacy navigation. `ensure_v2` still covers a server started without
    that hook."""
    compat_streamlit.use_navigation_v2()


def ensure_v2() -> None:
    legacy = compat_streamlit.legacy_pages_mode()
    compat_streamlit.use_navigation_v2()
    query = compat_streamlit.script_run_query_string()
    if _SEEN_KEY not in st.session_state:  # this session's first run
        st.session_state[_SEEN_KEY] = True
        if query:
            st.session_state[_PENDING_KEY] = (query, time.monotonic())
    if legacy:
        st.rerun()  # through app.py, with this run's query string
    pending = st.session_state.get(_PENDING_KEY)
    if pending is None:
        return
    kept, since = pending
    if time.monotonic() - since > KEEP_LINK_S or (query and query != kept):
        del st.session_state[_PENDING_KEY]
    elif not query:
        st.query_params.from_dict(dict(parse_qsl(kept)))
