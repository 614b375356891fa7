// Zero-height companion of the call page (same origin as the streamlit-webrtc iframes).
// Loaded by videochat/ui/webrtc.py, which replaces __VC_CONFIG__ with
// {"offerUrl": "...", "token": "..."}. Two jobs, both measured in docs/ARCHITECTURE.md:
//  1. auto-start: press each streamer's own Start button once per attempt, and again when
//     the frontend has stopped a call (it never retries on its own);
//  2. fast signalling: once a streamer's offer has gathered its candidates, POST it straight
//     to the server and apply the answer, instead of waiting for two Streamlit reruns to carry
//     offer and answer. The component's own path still runs; it simply finds the answer set.
(function () {
  const CFG = __VC_CONFIG__;
  const P = window.parent;
  const doc = P.document;
  // Shared across companion instances on this page, so no streamer is pressed twice.
  const seen = P.__vcStarts || (P.__vcStarts = new WeakMap());
  P.__vcFastLog = P.__vcFastLog || [];

  function legKey(frame) {
    // Each streamer sits in a container keyed "vcleg-<streamer key>" (class st-key-vcleg-…).
    const box = frame.closest('[class*="st-key-vcleg-"]');
    if (!box) return null;
    for (const c of box.classList) {
      if (c.indexOf('st-key-vcleg-') === 0) return c.slice('st-key-vcleg-'.length);
    }
    return null;
  }

  function gathered(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise(function (resolve) {
      const done = function () {
        if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
      };
      // Full gathering waits for TCP and every interface (~200 ms here); the server needs
      // one usable candidate to start checking. So go shortly after the first UDP one, or
      // after `ms` at most (a slow TURN server): later candidates still trickle through
      // the component's own path.
      const t = setTimeout(resolve, ms);
      pc.addEventListener('icegatheringstatechange', done);
      pc.addEventListener('icecandidate', function (e) {
        if (e.candidate && e.candidate.protocol === 'udp') setTimeout(resolve, 40);
      });
    });
  }

  async function fastOffer(pc, frame) {
    const t0 = Date.now();
    await gathered(pc, 1500);
    const key = legKey(frame);
    if (!key || pc.remoteDescription || pc.signalingState !== 'have-local-offer') return;
    let answer;
    try {
      const r = await P.fetch(CFG.offerUrl, {
        method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({key: key, token: CFG.token, type: 'offer',
                              sdp: pc.localDescription.sdp}),
      });
      if (!r.ok) { P.__vcFastLog.push([key, 'http ' + r.status]); return; }
      answer = await r.json();
    } catch (e) { P.__vcFastLog.push([key, 'error ' + e]); return; }
    // Whoever applied first (this path or the component's), the other shares its promise.
    const first = !pc.__vcAnswer;
    try {
      await pc.setRemoteDescription(answer);
      P.__vcFastLog.push([key, 'answered', Date.now() - t0, Date.now(),
                          first ? 'first' : 'second']);
    } catch (e) { P.__vcFastLog.push([key, 'apply ' + e]); }
  }

  function patch(frame) {
    const W = frame.contentWindow;
    if (!W || W.__vcFast || !W.RTCPeerConnection) return;
    W.__vcFast = true;
    const proto = W.RTCPeerConnection.prototype;
    // Both paths may bring the (same) answer at about the same time; the second
    // setRemoteDescription would fail in state "stable", and a failure makes the component
    // stop the call. So the first application is shared with whoever comes second.
    const setRemote = proto.setRemoteDescription;
    proto.setRemoteDescription = function (desc) {
      if (desc && desc.type === 'answer') {
        if (!this.__vcAnswer) this.__vcAnswer = setRemote.apply(this, arguments);
        return this.__vcAnswer;
      }
      return setRemote.apply(this, arguments);
    };
    const setLocal = proto.setLocalDescription;
    proto.setLocalDescription = function () {
      const pc = this;
      const done = setLocal.apply(pc, arguments);
      Promise.resolve(done).then(function () {
        const d = pc.localDescription;
        if (d && d.type === 'offer' && !pc.__vcOffered) {
          pc.__vcOffered = true;
          fastOffer(pc, frame);
        }
      }).catch(function () {});
      return done;
    };
  }

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
        patch(f);
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
  setInterval(tick, 50);
})();
