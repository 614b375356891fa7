"""Every private name of Streamlit 1.67 and streamlit-webrtc 0.79.0 that videochat/compat/ uses
still exists and still means what we rely on.

Fails loudly when an upgrade moves one (versions are pinned in requirements.txt); the docstrings
of videochat/compat/streamlit.py and videochat/compat/streamlit_webrtc.py say why each is used.
The aiortc and aioice names are pinned in tests/compat/test_private_names.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import streamlit as st
import streamlit_webrtc.component as component
from streamlit.runtime import Runtime
from streamlit.runtime.app_session import AppSession
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.websocket_session_manager import WebsocketSessionManager
from streamlit_webrtc.component import WebRtcStreamerContext
from streamlit_webrtc.relay import _SERVER_GLOBAL_RELAY_ATTR_NAME_
from streamlit_webrtc.webrtc import WebRtcWorker

from videochat.compat import streamlit as compat_streamlit
from videochat.compat import streamlit_webrtc as sw


def test_streamlit_session_internals_used_to_wake_sessions() -> None:
    assert hasattr(Runtime, "instance") and hasattr(Runtime, "exists")
    assert "self._session_mgr" in inspect.getsource(Runtime.__init__)
    for name in ("get_active_session_info", "is_active_session"):
        assert callable(getattr(WebsocketSessionManager, name))
    src = inspect.getsource(AppSession.request_rerun)
    # Every attribute request_rerun reads from the client state must exist on our stand-in.
    for attr in ("widget_states", "query_string", "page_script_hash", "page_name",
                 "fragment_id", "is_auto_rerun", "is_history_navigation",
                 "cached_message_hashes", "HasField"):
        assert f"client_state.{attr}" in src, attr
        assert hasattr(compat_streamlit.WakeState, attr) or attr in (
            "query_string", "page_script_hash", "page_name")
    init = inspect.getsource(AppSession.__init__)
    assert "self._event_loop" in init and "self._client_state" in init


def test_wake_state_copies_the_page_but_no_widget_values() -> None:
    class Saved:
        query_string = "room=r&name=n"
        page_script_hash = "abc"
        page_name = "call"

    state = compat_streamlit.WakeState(Saved())
    assert state.widget_states is None
    assert (state.query_string, state.page_script_hash, state.page_name) == (
        "room=r&name=n", "abc", "call")
    assert state.HasField("context_info") is False


def test_streamlit_navigation_and_component_internals() -> None:
    # videochat/ui/navigation.py: the process-wide legacy pages/ switch
    assert hasattr(PagesManager, "uses_pages_directory")
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(st.navigation)
    # videochat/ui/webrtc.py: components declared outside a script run are not registered
    from streamlit.components.lib.local_component_registry import LocalComponentRegistry
    from streamlit.components.v1 import component_registry

    assert "if ctx is not None:" in inspect.getsource(component_registry.declare_component)
    assert isinstance(getattr(Runtime, "component_registry", None), property)
    for name in ("get_component", "register_component"):
        assert callable(getattr(LocalComponentRegistry, name)), name
    # videochat/ui/server.py and app.py: `streamlit run` serves an st.App found in app.py
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(Path(__file__).resolve().parents[2] / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"


def test_streamlit_webrtc_internals_we_replace() -> None:
    assert sw.original_get_or_create_context is not sw.original_handle_worker_lifecycle
    src = inspect.getsource(sw.original_get_or_create_context)
    assert "_last_rendered_run_count" in src
    assert _SERVER_GLOBAL_RELAY_ATTR_NAME_ == "streamlit-webrtc-global-relay"
    assert callable(component._component_func)
    for name in ("_get_worker", "_set_worker", "_set_state"):
        assert callable(getattr(WebRtcStreamerContext, name)), name
    assert "self._worker_creation_lock" in inspect.getsource(WebRtcStreamerContext.__init__)


def test_internals_of_the_fast_signalling_path() -> None:
    params = inspect.signature(sw.original_handle_worker_lifecycle).parameters
    assert list(params)[:3] == ["context", "key", "sdp_offer"] and "make_worker" in params
    body = inspect.getsource(component.webrtc_streamer)
    assert "_handle_worker_lifecycle(" in body and "make_worker=" in body
    assert "_get_or_create_context(" in body
    lifecycle = inspect.getsource(sw.original_handle_worker_lifecycle)
    assert "_worker_creation_lock" in lifecycle and "process_offer" in lifecycle
    assert "remoteDescription == null" in _frontend_bundle().replace("==null", " == null")
    assert callable(WebRtcWorker.process_offer) and "local_description" in dir(WebRtcWorker)


def _frontend_bundle() -> str:
    assets = Path(component.__file__).parent / "frontend" / "dist" / "assets"
    return "".join(p.read_text(errors="replace") for p in assets.glob("index-*.js"))
