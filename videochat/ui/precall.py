"""Pre-call check on the join form: devices, ICE gathering and TURN, with a plain verdict.

The browser half runs inside its own small component iframe (getUserMedia and a throw-away
RTCPeerConnection with the same ICE configuration as the call) and shows its findings there,
as text only. The server half performs a real TURN allocation (videochat.media.turn) when TURN is
configured, so "TURN reachable" is checked from both ends.
"""

from __future__ import annotations

import json
import time

import streamlit as st

from videochat.media.turn import check_config_blocking
from videochat.ui.state import AppRuntime

_JS = """
<div id="out" style="font: 14px sans-serif; white-space: pre-line"></div>
<script>
(async function () {
  const cfg = __CONFIG__;
  const out = document.getElementById('out');
  const lines = [];
  const show = () => { out.textContent = lines.join('\\n'); };
  const say = (s) => { lines.push(s); show(); };
  let camera = false, mic = false;
  try {
    const s = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
    camera = s.getVideoTracks().length > 0; mic = s.getAudioTracks().length > 0;
    s.getTracks().forEach(t => t.stop());
  } catch (e) {
    say('Camera/microphone: ' + e.name + ' (' + e.message + ')');
  }
  say('Camera: ' + (camera ? 'found' : 'not available') + ' · Microphone: ' +
      (mic ? 'found' : 'not available'));
  const t0 = performance.now();
  const pc = new RTCPeerConnection(cfg);
  pc.createDataChannel('precall');
  const types = {host: 0, srflx: 0, relay: 0, prflx: 0};
  pc.onicecandidate = (e) => {
    if (e.candidate && e.candidate.candidate) {
      const m = / typ (\\w+)/.exec(e.candidate.candidate);
      if (m) types[m[1]] = (types[m[1]] || 0) + 1;
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    setTimeout(resolve, 8000);
  });
  const ms = Math.round(performance.now() - t0);
  pc.close();
  say('ICE gathering: ' + ms + ' ms · candidates: host ' + types.host + ', srflx ' +
      types.srflx + ', relay ' + types.relay);
  const turn = (cfg.iceServers || []).some(s => [].concat(s.urls).some(u => /^turns?:/.test(u)));
  let verdict;
  if (types.relay > 0) {
    verdict = 'Ready: TURN relay reachable, the call connects even through strict firewalls.';
  } else if (cfg.iceTransportPolicy === 'relay') {
    verdict = 'Blocked: relay-only mode but no TURN relay was reached.';
  }
  else if (turn) verdict = 'Warning: TURN is configured but not reachable; direct paths only.';
  else if (types.host + types.srflx > 0) verdict = 'Ready on this network (no TURN configured).';
  else verdict = 'Blocked: no network path was found.';
  if (!camera) verdict += ' You can still join receive-only.';
  say('Verdict: ' + verdict);
})();
</script>
"""


def render_precall(rt: AppRuntime) -> None:
    with st.expander("Pre-call check: camera, microphone, network"):
        if not st.button("Run the check", key="precall-run"):
            st.caption("Checks your devices and how your browser reaches the server "
                       "(ICE gathering, TURN) before you join.")
            return
        config = rt.settings.rtc_configuration(user="precall")
        st.iframe(_JS.replace("__CONFIG__", json.dumps(config)), height=110, alt="pre-call check")
        turn = rt.settings.turn()
        if not turn.urls:
            st.caption("Server side: no TURN server configured (VIDEOCHAT_TURN_URLS).")
            return
        for check in check_config_blocking(turn, "precall", time.time(), timeout=5.0):
            (st.success if check.ok else st.error)(f"Server → {check.message}")
