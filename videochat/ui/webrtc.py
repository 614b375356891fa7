"""Glue to streamlit-webrtc 0.79.0: the only module that touches its internals.

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
Everything else (signalling, workers, the player UI) is streamlit-webrtc's own.
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st
import streamlit.components.v1 as components
import streamlit_webrtc.component as _component
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from streamlit.runtime import Runtime
from streamlit_webrtc import WebRtcMode, WebRtcStreamerContext, webrtc_streamer
from streamlit_webrtc.eventloop import get_global_event_loop, loop_context
from streamlit_webrtc.relay import _SERVER_GLOBAL_RELAY_ATTR_NAME_

from videochat.participant import Participant, Slot
from videochat.settings import Settings

logger = logging.getLogger(__name__)

def publish_constraints(settings: Settings) -> dict[str, Any]:
    w, h, fps = settings.capture
    return {"video": {"width": {"ideal": w}, "height": {"ideal": h},
                      "frameRate": {"ideal": fps, "max": fps}}, "audio": True}


SUBSCRIBE_CONSTRAINTS: dict[str, Any] = {"video": True, "audio": True}
TILE_VIDEO_ATTRS: dict[str, Any] = {
    "autoPlay": True, "controls": False, "playsInline": True, "style": {"width": "100%"},
}


class BoundedMediaRelay(MediaRelay):
    """MediaRelay whose video consumers see only the newest frame (bounded memory/latency)."""

    def subscribe(self, track: MediaStreamTrack, buffered: bool = True) -> MediaStreamTrack:
        return super().subscribe(track, buffered=buffered and track.kind != "video")


OUR_PREFIXES = ("pub-", "sub-")
_original_get_or_create_context = _component._get_or_create_context


def _get_or_create_context(key: str) -> Any:
    if key.startswith(OUR_PREFIXES) and key in st.session_state:
        ctx = st.session_state[key]
        if hasattr(ctx, "_last_rendered_run_count"):
            ctx._last_rendered_run_count = None  # skips the orphan check for this run
    return _original_get_or_create_context(key)


def install() -> None:
    """Apply our two replacements (idempotent; needs the Streamlit runtime)."""
    _component._get_or_create_context = _get_or_create_context
    install_bounded_relay()


def install_bounded_relay() -> None:
    runtime = Runtime.instance()
    if isinstance(getattr(runtime, _SERVER_GLOBAL_RELAY_ATTR_NAME_, None), BoundedMediaRelay):
        return
    with loop_context(get_global_event_loop()):
        setattr(runtime, _SERVER_GLOBAL_RELAY_ATTR_NAME_, BoundedMediaRelay())
    logger.info("installed the bounded media relay")


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
        video_html_attrs=TILE_VIDEO_ATTRS,
        desired_playing_state=None,
        media_toggle_controls=False,
    )


def peer_connection(ctx: WebRtcStreamerContext[Any, Any]) -> RTCPeerConnection | None:
    worker = ctx._get_worker()
    pc = getattr(worker, "pc", None)
    return pc if isinstance(pc, RTCPeerConnection) else None


def stop_worker(ctx: object) -> None:
    """Stop the server side of a streamer now (no-op for other session-state values)."""
    get_worker = getattr(ctx, "_get_worker", None)
    worker = get_worker() if callable(get_worker) else None
    if worker is not None:
        worker.stop(timeout=0)


_COMPANION = """
<script>
(function () {
  const P = window.parent;
  const doc = P.document;
  // Shared across companion instances on this page, so no streamer is pressed twice.
  const seen = P.__vcStarts || (P.__vcStarts = new WeakMap());
  function tick() {
    const now = Date.now();
    doc.querySelectorAll('iframe').forEach(function (f) {
      const title = (f.title || '') + ' ' + (f.src || '');
      if (title.indexOf('webrtc_streamer') < 0) return;
      let d;
      try { d = f.contentDocument; } catch (e) { return; }
      if (!d || !d.body) return;
      if (!d.getElementById('vc-style')) {
        const s = d.createElement('style');
        s.id = 'vc-style';
        s.textContent = 'button.vc-hidden{display:none !important}';
        (d.head || d.body).appendChild(s);
      }
      const st = seen.get(f) || {attempts: 0, next: 0, pending: 0};
      let start = null, stop = null;
      d.querySelectorAll('button').forEach(function (b) {
        const t = (b.textContent || '').trim().toLowerCase();
        if (t === 'start' || t === 'stop') b.classList.add('vc-hidden');
        if (t === 'start') start = b;
        if (t === 'stop') stop = b;
      });
      if (stop) { st.attempts = 0; st.pending = 0; }  // signalling or playing: all good
      // start() awaits a lazy import before it shows Stop: a second press in that window
      // makes a second RTCPeerConnection and the call never connects. One press per
      // attempt, then wait for Stop (or give up on that attempt after 10 s).
      const waiting = st.pending && now - st.pending < 10000;
      if (start && !start.disabled && !waiting && now >= st.next) {
        st.attempts += 1;
        st.pending = now;
        // Restart at once, then back off (a denied camera must not loop on prompts).
        st.next = now + Math.min(30000, 1000 * Math.pow(2, Math.max(0, st.attempts - 2)));
        start.click();
      }
      seen.set(f, st);
    });
  }
  tick();
  setInterval(tick, 100);
})();
</script>
"""


def autostart_companion() -> None:
    """Press each streamer's Start as soon as it appears; restart a stopped call."""
    components.html(_COMPANION, height=0)

