"""Glue to streamlit-webrtc 0.79.0: what we replace in it, and why. Its private names are reached
only through videochat/compat/streamlit_webrtc.py (and aiortc's through videochat/compat/aiortc.py).

What we replace, and why (measured figures in docs/ARCHITECTURE.md):
- **Auto-start.** Rendering a streamer with `desired_playing_state=True` races in the
  frontend (several RTCPeerConnections per start, the answer applied to the wrong one). We
  leave `desired_playing_state=None` and a zero-height same-origin companion script presses
  each streamer's own Start button once it appears, and again whenever it reappears (the
  frontend stops a call on `disconnected`/`failed` and never retries: this is our restart).
- **Relay buffering.** streamlit-webrtc wraps every source track in the server-wide
  `MediaRelay` with `buffered=True`: an unbounded queue per consumer, so a slow encoder turns
  into growing latency and memory. We install a relay that keeps only the newest video frame.
- **Orphan detection.** streamlit-webrtc resets (and stops the worker of) any streamer that
  missed one script run, assuming the user navigated away. With several streamers on a page,
  Streamlit's fast reruns routinely interrupt a run before it reaches the later streamers,
  so live calls were being hung up at random. For our own streamers (keys `pub-`/`sub-`) the
  check is skipped; page navigation is still caught by streamlit-webrtc's own session
  observer, and a remounted component by its stale-answer reset.
- **Signalling latency.** An offer reaches the server, and its answer the browser, only
  through component values and two script reruns: 0.8–2.5 s per leg on this 2-core box,
  most of a join's time. The companion also POSTs each offer (once its candidates are
  gathered) to `/_vc/offer`, a route the app declares (videochat/ui/server.py); the handler runs
  the very worker factory streamlit-webrtc built for that streamer, under its own lock, and
  returns the answer, which the companion applies. streamlit-webrtc's own path still runs
  and finds the worker (and the answer) already there. Offers are accepted only with the
  participant's token, same-origin, and for a streamer rendered in this process.
Everything else (workers, the player UI, the fallback signalling) is streamlit-webrtc's own.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from aiortc import RTCPeerConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from streamlit_webrtc import WebRtcMode, WebRtcStreamerContext, webrtc_streamer
from streamlit_webrtc.eventloop import get_global_event_loop, loop_context

from videochat.compat import streamlit as compat_streamlit
from videochat.compat import streamlit_webrtc as sw
from videochat.compat.aiortc import BoundedMediaRelay
from videochat.media.legs import LegRegistry
from videochat.media.participant import Participant, Slot
from videochat.metrics import browser as browser_stats
from videochat.settings import Settings
from videochat.ui.server import BOOT_ID, boot_url, chat_url, offer_url

logger = logging.getLogger(__name__)

def publish_constraints(settings: Settings) -> dict[str, Any]:
    w, h, fps = settings.capture
    return {"video": {"width": {"ideal": w}, "height": {"ideal": h},
                      "frameRate": {"ideal": fps, "max": fps}}, "audio": True}


SUBSCRIBE_CONSTRAINTS: dict[str, Any] = {"video": True, "audio": True}
TILE_VIDEO_ATTRS: dict[str, Any] = {
    "autoPlay": True, "controls": False, "playsInline": True, "style": {"width": "100%"},
}


OUR_PREFIXES = ("pub-", "sub-")


def _get_or_create_context(key: str) -> Any:
    if key.startswith(OUR_PREFIXES) and key in st.session_state:
        sw.skip_orphan_check(st.session_state[key])
    return sw.original_get_or_create_context(key)


def install() -> None:
    """Apply our replacements (idempotent; needs the Streamlit runtime). The offer route is
    declared with the app (videochat/ui/server.py)."""
    sw.patch_component(_get_or_create_context, _handle_worker_lifecycle)
    register_component()
    install_bounded_relay()


def register_component() -> None:
    """Serve streamlit-webrtc's component. It is declared when streamlit_webrtc is imported, and
    Streamlit registers a declared component only if that import happens inside a script run;
    the app now imports it at start-up, outside any run (videochat/ui/server.py), and an
    unregistered component answers 404: blank tiles."""
    compat_streamlit.register_component(sw.declared_component())


def install_bounded_relay() -> None:
    if isinstance(sw.server_relay(), BoundedMediaRelay):
        return
    loop = get_global_event_loop()
    with loop_context(loop):
        sw.set_server_relay(BoundedMediaRelay(loop))
    logger.info("installed the bounded media relay")


# --- fast signalling ------------------------------------------------------------------------

MAX_SDP_CHARS = 64_000


@dataclass
class _Streamer:
    context: weakref.ref[WebRtcStreamerContext[Any, Any]]
    make_worker: Callable[[], Any]


_streamers: dict[str, _Streamer] = {}
_tokens: dict[str, str] = {}  # participant id prefix (as in the streamer keys) -> token
fast_answers = 0  # offers answered over the fast path (read by tests)


def _handle_worker_lifecycle(context: Any, key: str, sdp_offer: Any, *,
                             make_worker: Callable[[], Any]) -> None:
    if key.startswith(OUR_PREFIXES):
        # Remember the factory streamlit-webrtc built for this streamer in this run: the
        # fast path must create exactly the worker the component path would have.
        _streamers[key] = _Streamer(weakref.ref(context), make_worker)
        for stale in [k for k, v in _streamers.items() if v.context() is None]:
            del _streamers[stale]
    sw.original_handle_worker_lifecycle(context, key, sdp_offer, make_worker=make_worker)


def _owner(key: str) -> str | None:
    """The participant id prefix in a streamer key (`pub-<id12>-…`, `sub-<id12>-…`)."""
    parts = key.split("-")
    return parts[1] if len(parts) >= 3 else None


def token_for(participant_id: str) -> str:
    return _tokens.setdefault(participant_id[:12], secrets.token_urlsafe(24))


def token_matches(participant_prefix: str, token: str) -> bool:
    """Whether `token` is the one this process gave that participant's page."""
    expected = _tokens.get(participant_prefix)
    return expected is not None and hmac.compare_digest(expected, token)


def forget_streamers(participant_id: str) -> None:
    """Drop a departed participant's token and streamers (no offer is accepted after)."""
    prefix = participant_id[:12]
    _tokens.pop(prefix, None)
    for key in [k for k in _streamers if _owner(k) == prefix]:
        del _streamers[key]


def _ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


class _StaleOffer(Exception):
    pass


def answer_offer(context: Any, make_worker: Callable[[], Any], sdp: str) -> dict[str, str]:
    """Create the streamer's worker for this offer (or find the one the component path made
    for the same offer) and return its answer. Blocks: call from a worker thread."""
    with sw.worker_creation_lock(context):
        worker = sw.worker_of(context)
        if worker is None:
            worker = make_worker()
            worker.process_offer(sdp, "offer", timeout=10)
            sw.set_worker(context, worker)
            if not context.state.playing:
                sw.mark_signalling(context)
        else:
            remote = getattr(getattr(worker, "pc", None), "remoteDescription", None)
            if remote is None or _ufrag(remote.sdp) != _ufrag(sdp):
                raise _StaleOffer
    local = worker.local_description
    return {"sdp": local.sdp, "type": local.type}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def offer_endpoint(request: Request) -> Response:
    global fast_answers
    started = time.perf_counter()
    if not _same_origin(request):
        return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > browser_stats.MAX_BODY_BYTES:
        return JSONResponse({"error": f"body over {browser_stats.MAX_BODY_BYTES} bytes"},
                            status_code=413)
    raw = await request.body()
    if len(raw) > browser_stats.MAX_BODY_BYTES:
        return JSONResponse({"error": f"body over {browser_stats.MAX_BODY_BYTES} bytes"},
                            status_code=413)
    try:
        body = json.loads(raw)
        if isinstance(body, dict) and body.get("type") == "stats":
            return _stats_reply(body)
        key, token, sdp = str(body["key"]), str(body["token"]), str(body["sdp"])
        if body.get("type") != "offer" or len(sdp) > MAX_SDP_CHARS:
            raise ValueError(body.get("type"))
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "expected JSON {key, token, type: offer, sdp}"},
                            status_code=400)
    streamer = _streamers.get(key)
    owner = _owner(key)
    expected = _tokens.get(owner) if owner is not None else None
    if expected is None or not hmac.compare_digest(expected, token):
        return JSONResponse({"error": "unknown streamer or bad token"}, status_code=403)
    context = streamer.context() if streamer else None
    if streamer is None or context is None:
        return JSONResponse({"error": f"no streamer {key!r} here"}, status_code=404)
    loop = asyncio.get_running_loop()
    try:
        answer = await loop.run_in_executor(None, answer_offer, context,
                                            streamer.make_worker, sdp)
    except _StaleOffer:
        return JSONResponse({"error": "another offer owns this streamer"}, status_code=409)
    except Exception as exc:  # the component path remains; say why this one failed
        logger.warning("fast offer for %s failed: %s", key, exc)
        return JSONResponse({"error": str(exc)}, status_code=500)
    fast_answers += 1
    logger.debug("answered %s over the fast path in %.0f ms", key,
                 (time.perf_counter() - started) * 1000)
    return JSONResponse(answer)


# --- the pages' own stats, over the same route -------------------------------------------

_stats_target: tuple[browser_stats.BrowserStats, LegRegistry] | None = None


def serve_browser_stats(stats: browser_stats.BrowserStats | None, legs: LegRegistry) -> None:
    """Accept `type: "stats"` batches on the offer route, into `stats`, for `legs`."""
    global _stats_target
    _stats_target = (stats, legs) if stats is not None else None


def leg_id_of_key(key: str) -> str | None:
    """The leg id the call page registers for a streamer key (ui/call.py `_leg_id`):
    `pub-<id12>-<epoch>` -> `<id12>:pub`, `sub-<id12>-<slot>-<epoch>` -> `<id12>:sub<slot>`."""
    parts = key.split("-")
    if len(parts) == 3 and parts[0] == "pub":
        return f"{parts[1]}:pub"
    if len(parts) == 4 and parts[0] == "sub" and parts[2].isdigit():
        return f"{parts[1]}:sub{parts[2]}"
    return None


def _owner_of_token(token: Any) -> str | None:
    if not isinstance(token, str):
        return None
    for prefix, expected in list(_tokens.items()):
        if hmac.compare_digest(expected, token):
            return prefix
    return None


def _stats_reply(body: dict[str, Any]) -> Response:
    """A page's getStats() batch (videochat/metrics/browser.py says what is refused, and why).
    Cheap and non-blocking: validation, then appends to the metrics store's buffer."""
    owner = _owner_of_token(body.get("token"))
    if owner is None:
        return JSONResponse({"error": "unknown participant or bad token"}, status_code=403)
    target = _stats_target
    if target is None:
        return JSONResponse({"error": "browser stats are not served here yet"},
                            status_code=503, headers={"Retry-After": "10"})
    stats, legs = target

    def resolve(key: str) -> Any:
        leg_id = leg_id_of_key(key)
        return legs.get(leg_id) if leg_id is not None else None

    reply = stats.ingest(body, owner=owner, resolve=resolve)
    headers = {"Retry-After": str(reply.retry_after_s)} if reply.retry_after_s else None
    return JSONResponse(reply.body, status_code=reply.status, headers=headers)


def publish_key(participant: Participant) -> str:
    return f"pub-{participant.id[:12]}-{participant.publish_epoch}"


def slot_key(participant: Participant, slot: Slot) -> str:
    return f"sub-{participant.id[:12]}-{slot.index}-{slot.epoch}"


def publish(participant: Participant, settings: Settings) -> WebRtcStreamerContext[Any, Any]:
    """The participant's own camera and microphone, into its hubs."""
    return webrtc_streamer(
        key=publish_key(participant),
        mode=WebRtcMode.SENDONLY,
        frontend_rtc_configuration=settings.rtc_configuration(user=participant.id),
        server_rtc_configuration=settings.server_rtc_configuration(user=participant.id),
        media_stream_constraints=publish_constraints(settings),
        sink_video_track=participant.video_hub.sink(),
        sink_audio_track=participant.audio_hub.sink(),
        video_html_attrs={**TILE_VIDEO_ATTRS, "muted": True},
        desired_playing_state=None,
    )


def subscribe(
    participant: Participant, slot: Slot, settings: Settings
) -> WebRtcStreamerContext[Any, Any]:
    """One receive-only connection showing whoever the server binds to this slot."""
    return webrtc_streamer(
        key=slot_key(participant, slot),
        mode=WebRtcMode.RECVONLY,
        frontend_rtc_configuration=settings.rtc_configuration(user=participant.id),
        server_rtc_configuration=settings.server_rtc_configuration(user=participant.id),
        media_stream_constraints=SUBSCRIBE_CONSTRAINTS,
        source_video_track=slot.video,
        source_audio_track=slot.audio,
        # Muted video may autoplay without a gesture; the companion plays the sound apart.
        video_html_attrs={**TILE_VIDEO_ATTRS, "muted": True},
        desired_playing_state=None,
        media_toggle_controls=False,
    )


def peer_connection(ctx: WebRtcStreamerContext[Any, Any]) -> RTCPeerConnection | None:
    worker = sw.worker_of(ctx)
    pc = getattr(worker, "pc", None)
    return pc if isinstance(pc, RTCPeerConnection) else None


def stop_worker(ctx: object) -> None:
    """Stop the server side of a streamer now (no-op for other session-state values)."""
    worker = sw.worker_of(ctx)
    if worker is not None:
        worker.stop(timeout=0)


_COMPANION_JS = (Path(__file__).with_name("companion.js")).read_text(encoding="utf-8")
_RESTART_WATCH_JS = (Path(__file__).with_name("restart_watch.js")).read_text(encoding="utf-8")


def autostart_companion(participant: Participant, rejoin: str = "") -> None:
    """Press each streamer's Start as soon as it appears (restarting a stopped call), signal
    its offer over the fast path, play remote media without a gesture, show the self view and
    apply the camera and microphone switches; install the restart watch in the page."""
    config = {"offerUrl": offer_url(), "token": token_for(participant.id),
              "camera": participant.camera_on, "mic": participant.mic_on,
              "restart": {"boot": BOOT_ID, "bootUrl": boot_url(), "chatUrl": chat_url(),
                          "rejoin": rejoin, "room": participant.room, "pid": participant.id[:12],
                          "token": token_for(participant.id)},
              "watch": _RESTART_WATCH_JS}
    # "</" escaped: the config (with the watch's source) sits inside a <script> element.
    script = _COMPANION_JS.replace("__VC_CONFIG__", json.dumps(config).replace("</", "<\\/"))
    st.iframe(f"<script>{script}</script>", height=1, alt="call companion")


def leg_container(key: str) -> Any:
    """The keyed container a streamer sits in: the companion reads the key from its class."""
    return st.container(key=f"vcleg-{key}")

