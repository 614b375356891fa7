"""Where a page's time goes between opening a link and media: marks in every frame of a
page (epoch ms), read back as seconds from a moment of the benchmark's choosing. Used by
bench/join.py (a later participant joining) and bench/restart.py (a page rejoining after the
app restarted: the marks start again with each document the page loads)."""

from __future__ import annotations

from typing import Any

# Marked in every frame of a page (epoch ms):
# document start, the Streamlit websocket, camera, each peer connection's offer/answer/connect.
PHASES_JS = """
(() => {
  if (window.__vcPhases) return;
  const P = window.__vcPhases = {};
  const mark = (k) => { if (!(k in P)) P[k] = Date.now(); };
  mark('document');
  document.addEventListener('DOMContentLoaded', () => mark('dom_ready'));
  const WS = window.WebSocket;
  if (WS && window === window.top) {
    const W = function (...a) {
      const ws = new WS(...a); mark('ws_created');
      ws.addEventListener('open', () => mark('ws_open'));
      ws.addEventListener('message', () => mark('ws_first_message'));
      return ws;
    };
    W.prototype = WS.prototype; Object.setPrototypeOf(W, WS); window.WebSocket = W;
  }
  const md = navigator.mediaDevices;
  if (md && md.getUserMedia) {
    const gum = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => { mark('camera_asked');
      return gum(c).then((s) => { mark('camera_ready'); return s; }); };
  }
  const PC = window.RTCPeerConnection;
  if (PC) {
    const sld = PC.prototype.setLocalDescription, srd = PC.prototype.setRemoteDescription;
    PC.prototype.setLocalDescription = function (...a) {
      mark('offer_set');
      if (!this.__vcPhased) { this.__vcPhased = true;
        this.addEventListener('connectionstatechange', () => {
          if (this.connectionState === 'connected') mark('connected'); }); }
      return sld.apply(this, a); };
    PC.prototype.setRemoteDescription = function (...a) {
      return srd.apply(this, a).then((r) => { mark('answer_set'); return r; }); };
  }
})();
"""
PHASE_KEYS = ("dom_ready", "ws_open", "ws_first_message", "component_document", "camera_ready",
              "offer_set", "answer_set", "connected")


def page_phases(page: Any, t0: float) -> dict[str, float]:
    """Seconds from `t0` (e.g. the link being opened) to the first occurrence of each phase
    in any frame (the page for Streamlit's own, the streamlit-webrtc iframes for the media
    ones)."""
    out: dict[str, float] = {}
    for frame in page.frames:
        try:
            marks = frame.evaluate("() => window.__vcPhases || {}")
        except Exception:  # noqa: BLE001 - a frame that went away
            continue
        webrtc = "streamlit_webrtc" in frame.url
        for key, ms in marks.items():
            name = "component_document" if webrtc and key == "document" else key
            if name == "document" or (webrtc and name in ("dom_ready",)):
                continue
            at = ms / 1000 - t0
            out[name] = min(out.get(name, at), at)
    return {k: round(out[k], 3) for k in PHASE_KEYS if k in out}
