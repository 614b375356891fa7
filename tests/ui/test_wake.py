"""The private Streamlit / streamlit-webrtc APIs we rely on still exist.

These fail loudly when an upgrade moves them (versions are pinned in requirements.txt);
see videochat/ui/wake.py and videochat/ui/webrtc.py for why each is used. The aiortc and aioice
ones are pinned in tests/compat/test_private_names.py.
"""

from __future__ import annotations

import inspect

import streamlit_webrtc.component as component
from streamlit.runtime import Runtime
from streamlit.runtime.app_session import AppSession
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.websocket_session_manager import WebsocketSessionManager
from streamlit_webrtc.relay import _SERVER_GLOBAL_RELAY_ATTR_NAME_

from videochat.ui import wake


def test_streamlit_session_internals_used_to_wake_sessions() -> None:
    assert hasattr(Runtime, "instance") and hasattr(Runtime, "exists")
    for name in ("get_active_session_info", "is_active_session"):
        assert callable(getattr(WebsocketSessionManager, name))
    src = inspect.getsource(AppSession.request_rerun)
    # Every attribute request_rerun reads from the client state must exist on our stand-in.
    for attr in ("widget_states", "query_string", "page_script_hash", "page_name",
                 "fragment_id", "is_auto_rerun", "is_history_navigation",
                 "cached_message_hashes", "HasField"):
        assert f"client_state.{attr}" in src, attr
        assert hasattr(wake._WakeState, attr) or attr in ("query_string", "page_script_hash",
                                                          "page_name")
    init = inspect.getsource(AppSession.__init__)
    assert "self._event_loop" in init and "self._client_state" in init


def test_wake_state_copies_the_page_but_no_widget_values() -> None:
    class Saved:
        query_string = "room=r&name=n"
        page_script_hash = "abc"
        page_name = "call"

    state = wake._WakeState(Saved())
    assert state.widget_states is None
    assert (state.query_string, state.page_script_hash, state.page_name) == (
        "room=r&name=n", "abc", "call")
    assert state.HasField("context_info") is False


def test_streamlit_webrtc_internals_we_replace() -> None:
    assert callable(component._get_or_create_context)
    src = inspect.getsource(component._original_get_or_create_context
                            if hasattr(component, "_original_get_or_create_context")
                            else component._get_or_create_context)
    assert "_last_rendered_run_count" in src
    assert _SERVER_GLOBAL_RELAY_ATTR_NAME_ == "streamlit-webrtc-global-relay"
    assert hasattr(PagesManager, "uses_pages_directory")


def test_internals_of_the_fast_signalling_path() -> None:
    from streamlit.web.server.starlette import starlette_server
    from streamlit_webrtc.webrtc import WebRtcWorker

    params = inspect.signature(component._handle_worker_lifecycle).parameters
    assert list(params)[:3] == ["context", "key", "sdp_offer"] and "make_worker" in params
    body = inspect.getsource(component.webrtc_streamer)
    assert "_handle_worker_lifecycle(" in body and "make_worker=" in body
    lifecycle = inspect.getsource(webrtc_original_lifecycle())
    assert "_worker_creation_lock" in lifecycle and "process_offer" in lifecycle
    assert "remoteDescription == null" in _frontend_bundle().replace("==null", " == null")
    assert callable(WebRtcWorker.process_offer) and "local_description" in dir(WebRtcWorker)
    assert "create_starlette_app(self._runtime)" in inspect.getsource(starlette_server)


def webrtc_original_lifecycle() -> object:
    from videochat.ui import webrtc

    return webrtc._original_handle_worker_lifecycle


def _frontend_bundle() -> str:
    from pathlib import Path

    assets = Path(component.__file__).parent / "frontend" / "dist" / "assets"
    return "".join(p.read_text(errors="replace") for p in assets.glob("index-*.js"))
