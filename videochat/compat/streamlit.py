"""Streamlit 1.67 internals, in one place (pinned by tests/compat/test_private_names.py).

- `PagesManager.uses_pages_directory`: the process-wide switch between the legacy `pages/`
  navigation and `st.navigation` (videochat/ui/navigation.py says why we set it).
- `Runtime.instance()._session_mgr`, `AppSession.request_rerun`, `AppSession._client_state`,
  `AppSession._event_loop`: rerun another browser session without polling (videochat/ui/wake.py).
  Measured in a spike: a wake reaches the other page's DOM in ~320 ms median at ~0 idle cost,
  against ~9 % of a core per session for a 1 Hz polling fragment.
- `Runtime.component_registry`: registering a custom component that was declared outside a script
  run (Streamlit registers a declared component only inside one).
"""

from __future__ import annotations

from typing import Any

from streamlit.runtime import Runtime
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx


def legacy_pages_mode() -> bool:
    return bool(PagesManager.uses_pages_directory)


def use_navigation_v2() -> None:
    PagesManager.uses_pages_directory = False


def script_run_query_string() -> str:
    """The query string the current script run was started with ("" outside a run)."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.query_string if ctx is not None else ""


def current_session_id() -> str | None:
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else None


def _session_manager() -> Any | None:
    if not Runtime.exists():
        return None
    return Runtime.instance()._session_mgr


def session_alive(session_id: str) -> bool:
    """True while the session's browser tab is connected."""
    mgr = _session_manager()
    return bool(mgr is not None and mgr.is_active_session(session_id))


def request_rerun(session_id: str) -> bool:
    """Ask a live session to rerun its script, keeping its page and query string but replaying
    no widget value; safe from any thread. False when the session is gone."""
    mgr = _session_manager()
    info = mgr.get_active_session_info(session_id) if mgr is not None else None
    if info is None:
        return False
    session = info.session
    # AppSession is not thread-safe: hop onto its own event loop.
    session._event_loop.call_soon_threadsafe(
        lambda s=session: s.request_rerun(WakeState(s._client_state))
    )
    return True


class WakeState:
    """The session's saved page and query string, but *no* widget states.

    Passing the saved ClientState itself would replay the widget values of the last finished
    run: with fastReruns that can overwrite a newer value the browser just sent (e.g. a
    streamlit-webrtc component that moved to "playing"), and the component would be reset
    and its connection stopped. `widget_states=None` keeps whatever the session has now;
    the query string and page keep the tab where it is.
    """

    widget_states = None
    fragment_id = ""
    is_auto_rerun = False
    is_history_navigation = False
    cached_message_hashes: tuple[str, ...] = ()

    def __init__(self, saved: Any) -> None:
        self.query_string = saved.query_string
        self.page_script_hash = saved.page_script_hash
        self.page_name = saved.page_name

    def HasField(self, name: str) -> bool:  # noqa: N802 - mimics the protobuf API
        return False


def register_component(component: Any) -> None:
    """Serve a declared custom component even if it was declared outside a script run."""
    registry = Runtime.instance().component_registry
    if registry.get_component(component.name) is None:
        registry.register_component(component)
