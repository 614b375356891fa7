"""streamlit-webrtc 0.79.0 internals, in one place (pinned by tests/compat/test_private_names.py).

videochat/ui/webrtc.py says what we replace and why (with measurements); this module only
reaches the private names:

- `component._get_or_create_context`, `component._handle_worker_lifecycle`: module functions
  that `webrtc_streamer()` calls; we wrap both (orphan check, worker factory capture).
- `WebRtcStreamerContext._last_rendered_run_count`: cleared to skip the orphan check for a run.
- `WebRtcStreamerContext._get_worker`, `_set_worker`, `_set_state`, `_worker_creation_lock`:
  the fast signalling path creates the very worker the component path would, under its lock.
- `relay._SERVER_GLOBAL_RELAY_ATTR_NAME_`: where the server-wide MediaRelay lives on Streamlit's
  Runtime; we put a bounded one there.
- `component._component_func`: the declared component, registered when imported outside a run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import streamlit_webrtc.component as _component
from streamlit.runtime import Runtime
from streamlit_webrtc.component import WebRtcStreamerState
from streamlit_webrtc.relay import _SERVER_GLOBAL_RELAY_ATTR_NAME_

GetContext = Callable[[str], Any]
HandleLifecycle = Callable[..., None]

original_get_or_create_context: GetContext = _component._get_or_create_context
original_handle_worker_lifecycle: HandleLifecycle = _component._handle_worker_lifecycle


def patch_component(get_or_create_context: GetContext,
                    handle_worker_lifecycle: HandleLifecycle) -> None:
    """Route `webrtc_streamer()`'s two internal steps through ours (idempotent)."""
    _component._get_or_create_context = get_or_create_context  # type: ignore[assignment]
    _component._handle_worker_lifecycle = handle_worker_lifecycle


def skip_orphan_check(context: Any) -> None:
    if hasattr(context, "_last_rendered_run_count"):
        context._last_rendered_run_count = None


def worker_of(context: Any) -> Any | None:
    get_worker = getattr(context, "_get_worker", None)
    return get_worker() if callable(get_worker) else None


def worker_creation_lock(context: Any) -> threading.Lock:
    lock: threading.Lock = context._worker_creation_lock
    return lock


def set_worker(context: Any, worker: Any) -> None:
    context._set_worker(worker)


def mark_signalling(context: Any) -> None:
    """A script run that started before the frontend's "signalling" value arrived must not take
    a fresh worker for a stopped streamer's leftover."""
    context._set_state(WebRtcStreamerState(playing=False, signalling=True))


def server_relay() -> Any | None:
    return getattr(Runtime.instance(), _SERVER_GLOBAL_RELAY_ATTR_NAME_, None)


def set_server_relay(relay: Any) -> None:
    setattr(Runtime.instance(), _SERVER_GLOBAL_RELAY_ATTR_NAME_, relay)


def declared_component() -> Any:
    return _component._component_func
