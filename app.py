"""Entry point: `streamlit run app.py`.

Streamlit reads this file twice over. `streamlit run` imports it as a module and finds the
`st.App` below: the server, with our start-up hook and route (videochat/ui/server.py). Each
page view then runs it as the script (`__name__ == "__main__"`): logging, page config and the
navigation between the pages.
"""

from __future__ import annotations

import logging

import streamlit as st


def _configure_logging(level: str) -> None:
    # Streamlit installs its own root handlers, so basicConfig would be a no-op: give our
    # package its own handler, once per process (this script reruns on every interaction).
    log = logging.getLogger("videochat")
    if not any(getattr(h, "_videochat", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._videochat = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


def _page_script() -> None:
    from videochat.ui.login import require_login
    from videochat.ui.state import get_settings

    _configure_logging(get_settings().log_level)
    st.set_page_config(page_title="videochat", page_icon="🎥", layout="wide")
    call_page = st.Page("pages/call.py", title="Call", icon="🎥", url_path="call")

    def home() -> None:
        # The default page is served at "/" only; a default /call would answer "page not
        # found" to every shared /call?room=… link. So "/" forwards to /call, keeping the
        # query string.
        st.switch_page(call_page, query_params=dict(st.query_params))

    pages = [
        st.Page(home, title="Home", url_path="home", default=True, visibility="hidden"),
        call_page,
        st.Page("pages/diagnostics.py", title="Diagnostics", icon="📈", url_path="diagnostics"),
        st.Page("pages/faults.py", title="Faults", icon="⚡", url_path="faults"),
        st.Page("pages/qa.py", title="QA sessions", icon="✅", url_path="qa"),
    ]
    require_login()  # sign-in screen and stop, when [auth] is configured; else nothing
    st.navigation(pages).run()


if __name__ == "__main__":
    _page_script()
else:
    from videochat.ui.server import lifespan, routes

    _configure_logging("INFO")  # start-up messages; the settings' level applies from the page
    app = st.App("app.py", lifespan=lifespan, routes=routes())
