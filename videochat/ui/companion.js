// Zero-height companion of the call page (same origin as the streamlit-webrtc iframes).
// Loaded by videochat/ui/webrtc.py, which replaces __VC_CONFIG__ with
// {"offerUrl": "...", "token": "...", "camera": bool, "mic": bool}. Its jobs, each measured in
// docs/ARCHITECTURE.md:
//  1. auto-start: press each streamer's own Start button once per attempt, and again when
//     the frontend has stopped a call (it never retries on its own);
//  2. fast signalling: once a streamer's offer has gathered its candidates, POST it straight
//     to the server and apply the answer, instead of waiting for two Streamlit reruns to carry
//     offer and answer. The component's own path still runs; it simply finds the answer set;
//  3. playback without a gesture: remote video plays muted (always allowed), its audio plays
//     through an <audio> element of the top page; where the browser refuses sound, an
//     "Enable sound" button shows and the first gesture anywhere on the page retries;
//  4. self view: one's own camera, mirrored and muted, in one's own tile, and the camera and
//     microphone switches applied to the published tracks;
//  5. restart watch (restart_watch.js, issue 17): installed once into the top page, handed this
//     run's boot id and rejoin token, and asked to post any chat typed while the server was away.
//  5. browser stats: each leg's getStats() once a second, batched every 4 s to the same route
//     (type "stats", videochat/metrics/browser.py validates and stores them).
(function () {
  const CFG = __VC_CONFIG__;
  const P = window.parent;
  const doc = P.document;
  P.__vcRestartCfg = CFG.restart;
  if (CFG.restart && CFG.restart.rejoin) P.sessionStorage.setItem('vc-rejoin', CFG.restart.rejoin);
  if (!P.__vcWatch && CFG.watch) {
    // A script element of the top page: it must outlive this frame, replaced on reruns.
    const s = doc.createElement('script');
    s.textContent = CFG.watch;
    doc.head.appendChild(s);
  }
  if (P.__vcFlushOutbox) P.__vcFlushOutbox();
  // Shared across companion instances on this page, so no streamer is pressed twice.
  const seen = P.__vcStarts || (P.__vcStarts = new WeakMap());
  P.__vcFastLog = P.__vcFastLog || [];
  const audios = P.__vcAudios || (P.__vcAudios = new Map());  // leg key -> <audio> in the top page

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
    const md = W.navigator.mediaDevices;
    if (md && md.getUserMedia) {
      // Keep the stream streamlit-webrtc asks for: the self view and the mute switches use it.
      const gum = md.getUserMedia.bind(md);
      md.getUserMedia = function (c) {
        return gum(c).then(function (s) { W.__vcLocal = s; W.__vcLocalError = null; return s; },
                           function (e) { W.__vcLocalError = e; throw e; });
      };
    }
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
      W.__vcPc = pc;  // the frame's current connection, for the stats reports (job 5)
      Promise.resolve(done).then(function () {
        const d = pc.localDescription;
        if (d && d.type === 'offer' && !pc.__vcOffered) {
          pc.__vcOffered = true;
          fastOffer(pc, frame);
          // A failed connection may be the server itself going away: let the watch check.
          pc.addEventListener('iceconnectionstatechange', function () {
            if (pc.iceConnectionState === 'failed' && P.__vcCheckServer) P.__vcCheckServer();
          });
        }
      }).catch(function () {});
      return done;
    };
  }


  // --- playback without a gesture -------------------------------------------------------------
  function soundBox() {
    let box = doc.getElementById('vc-sound');
    if (box) return box;
    box = doc.createElement('div');
    box.id = 'vc-sound';
    box.style.cssText = 'display:none';
    const b = doc.createElement('button');
    b.id = 'vc-enable-sound';
    b.type = 'button';
    b.textContent = '\uD83D\uDD07 Enable sound';
    b.title = 'Your browser blocked sound until you interact with the page';
    b.style.cssText = 'position:fixed;top:0.6rem;left:50%;transform:translateX(-50%);' +
      'z-index:1000000;padding:0.5rem 1rem;border-radius:0.5rem;border:1px solid #f0b429;' +
      'background:#fff8e1;color:#5c3c00;font:600 15px sans-serif;cursor:pointer;' +
      'box-shadow:0 2px 8px rgba(0,0,0,.2)';
    // Through P: a companion frame replaced on a rerun takes its functions with it.
    b.addEventListener('click', function () { P.__vcRetrySound(); });
    box.appendChild(b);
    doc.body.appendChild(box);
    return box;
  }

  function setSound(state) {
    P.__vcSound = state;  // 'playing' | 'blocked' (read by the tests)
    const box = soundBox();
    box.style.display = state === 'blocked' ? 'block' : 'none';
  }

  function playAudio(a) {
    return a.play().then(function () {
      if (P.__vcSound !== 'blocked' || allPlaying()) setSound('playing');
    }, function (e) {
      if (e && e.name === 'NotAllowedError') setSound('blocked');
    });
  }

  function allPlaying() {
    for (const a of audios.values()) if (a.srcObject && a.paused) return false;
    return true;
  }

  function retrySound() {
    for (const a of audios.values()) if (a.srcObject && a.paused) playAudio(a);
  }

  // The first gesture anywhere (the top page or any same-origin frame) unlocks sound. The
  // listeners stay with the documents; they call whichever companion is current.
  P.__vcRetrySound = retrySound;
  function listenForGesture(target) {
    if (!target || target.__vcGesture) return;
    target.__vcGesture = true;
    ['pointerdown', 'keydown', 'touchend'].forEach(function (t) {
      target.addEventListener(t, function () {
        if (P.__vcSound === 'blocked' && P.__vcRetrySound) P.__vcRetrySound();
      }, true);
    });
  }
  listenForGesture(doc);

  function tileNote(d, text) {
    let n = d.getElementById('vc-note');
    if (!text) { if (n) n.remove(); return; }
    if (!n) {
      n = d.createElement('div');
      n.id = 'vc-note';
      n.style.cssText = 'font:14px sans-serif;color:#555;padding:4px 2px';
      d.body.insertBefore(n, d.body.firstChild);
    }
    if (n.textContent !== text) n.textContent = text;
  }

  function remoteMedia(key, d) {
    const v = d.querySelector('video');
    if (!v) return;
    v.dataset.vc = 'remote';
    // Muted video may always autoplay; the sound goes through its own element below.
    if (!v.muted) v.muted = true;
    const stream = v.srcObject;
    if (stream && v.paused && !v.__vcPlaying) {
      v.__vcPlaying = true;
      v.play().then(function () { tileNote(d, ''); },
                    function () { tileNote(d, 'Video paused by the browser: click to play'); })
        .finally(function () { v.__vcPlaying = false; });
      v.onclick = function () { v.play().catch(function () {}); };
    }
    const tracks = stream ? stream.getAudioTracks() : [];
    const id = tracks.map(function (t) { return t.id; }).join(',');
    let a = audios.get(key);
    if (!a) {
      a = doc.createElement('audio');
      a.dataset.vcLeg = key;
      a.autoplay = true;
      soundBox().appendChild(a);
      audios.set(key, a);
    }
    if (a.__vcTracks !== id) {
      a.__vcTracks = id;
      a.srcObject = tracks.length ? new P.MediaStream(tracks) : null;
      if (tracks.length) playAudio(a);
    } else if (tracks.length && a.paused && P.__vcSound !== 'blocked') {
      playAudio(a);
    }
  }

  function forgetGoneLegs(live) {
    for (const [key, a] of audios) {
      if (!live.has(key)) { a.srcObject = null; a.remove(); audios.delete(key); }
    }
  }

  // --- self view and mute switches ---------------------------------------------------------
  function selfView(f, d) {
    const W = f.contentWindow;
    const s = W && W.__vcLocal;
    const cams = s ? s.getVideoTracks() : [];
    if (s) {
      cams.forEach(function (t) { t.enabled = CFG.camera !== false; });
      s.getAudioTracks().forEach(function (t) { t.enabled = CFG.mic !== false; });
    }
    let sv = d.querySelector('video[data-vc="self"]');
    if (!cams.length) {
      if (sv) sv.remove();
      const err = W && W.__vcLocalError;
      if (err) tileNote(d, 'No camera or microphone (' + (err.name || err) + '): ' +
                           'you still see and hear the others');
      else if (s) tileNote(d, 'No camera: the others hear you');
      return;
    }
    if (!sv) {
      sv = d.createElement('video');
      sv.dataset.vc = 'self';
      sv.muted = true;
      sv.autoplay = true;
      sv.playsInline = true;
      sv.style.cssText = 'width:100%;transform:scaleX(-1);border-radius:0.5rem;background:#000';
      d.body.insertBefore(sv, d.body.firstChild);
    }
    if (sv.srcObject !== s) sv.srcObject = s;
    if (sv.paused) sv.play().catch(function () {});
    tileNote(d, CFG.camera === false ? 'Camera off: the others see a black tile' : '');
  }

  function tick() {
    const now = Date.now();
    const live = new Set();
    doc.querySelectorAll('iframe').forEach(function (f) {
      const title = (f.title || '') + ' ' + (f.src || '');
      if (title.indexOf('webrtc_streamer') < 0) return;
      let d;
      try { d = f.contentDocument; } catch (e) { return; }
      if (!d || !d.body) return;
      listenForGesture(d);
      const key = legKey(f);
      if (key && key.indexOf('sub-') === 0) { live.add(key); remoteMedia(key, d); }
      if (key && key.indexOf('pub-') === 0) selfView(f, d);
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
    forgetGoneLegs(live);
  }
  // --- browser stats (job 5) ---------------------------------------------------------------
  // One collector per page: a companion replaced on a rerun hands over to the newest one.
  const statsId = {};
  P.__vcStatsOwner = statsId;
  P.__vcStatsBuf = P.__vcStatsBuf || [];
  P.__vcStatsLog = P.__vcStatsLog || [];  // [time, http status] per batch (read by tests)

  function num(x) { return typeof x === 'number' && isFinite(x) ? x : null; }
  function rate(a, b, dt) {  // per second, or null when a counter is missing or went back
    return a === null || b === null || a < b || dt <= 0 ? null : (a - b) / dt;
  }
  function ratio(da, db) { return da === null || db === null || db <= 0 ? null : da / db; }
  function delta(cur, prev, f) {
    const a = cur ? num(cur[f]) : null, b = prev ? num(prev[f]) : null;
    return a === null || b === null || a < b ? null : a - b;
  }
  function scale(x, k) { return x === null || x === undefined ? null : x * k; }
  function clamp(x, lo, hi, digits) {  // null stays null: never report a made-up 0
    if (x === null || x === undefined || !isFinite(x)) return null;
    const p = Math.pow(10, digits);
    return Math.round(Math.min(hi, Math.max(lo, x)) * p) / p;
  }

  function digest(report) {
    const d = {inV: null, inA: null, outV: null, bytesIn: 0, bytesOut: 0, remote: null,
               pair: null};
    let selected = null;
    report.forEach(function (s) {
      if (s.type === 'inbound-rtp') {
        d.bytesIn += s.bytesReceived || 0;
        if (s.kind === 'video') d.inV = s; else if (s.kind === 'audio') d.inA = s;
      } else if (s.type === 'outbound-rtp') {
        d.bytesOut += s.bytesSent || 0;
        if (s.kind === 'video') d.outV = s;
      } else if (s.type === 'remote-inbound-rtp' && s.kind === 'video') {
        d.remote = s;
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        selected = s.selectedCandidatePairId;
      }
    });
    report.forEach(function (s) {
      if (s.type === 'candidate-pair' && (s.id === selected || (!selected && s.nominated))) {
        d.pair = s;
      }
    });
    return d;
  }

  function statsSample(key, d, prev, dt, now) {
    const out = {key: key, at: now};
    out.bitrate_in_kbps = clamp(scale(rate(d.bytesIn, prev.bytesIn, dt), 0.008), 0, 1e6, 1);
    out.bitrate_out_kbps = clamp(scale(rate(d.bytesOut, prev.bytesOut, dt), 0.008), 0, 1e6, 1);
    const pairRtt = d.pair ? num(d.pair.currentRoundTripTime) : null;
    const remRtt = d.remote ? num(d.remote.roundTripTime) : null;
    out.rtt_ms = clamp(scale(remRtt !== null ? remRtt : pairRtt, 1000), 0, 60000, 1);
    if (d.pair && num(d.pair.availableOutgoingBitrate) !== null) {
      out.available_out_kbps = clamp(d.pair.availableOutgoingBitrate / 1000, 0, 1e6, 1);
    }
    const v = d.inV, pv = prev.inV;
    if (v) {  // a receiving leg: what this person saw
      const lost = delta(v, pv, 'packetsLost'), recv = delta(v, pv, 'packetsReceived');
      out.loss_fraction = lost === null || recv === null ? null :
        clamp(ratio(lost, lost + recv) || 0, 0, 1, 4);
      out.jitter_ms = clamp(scale(num(v.jitter), 1000), 0, 60000, 1);
      out.fps = clamp(rate(num(v.framesDecoded), pv ? num(pv.framesDecoded) : null, dt),
                      0, 240, 2);
      out.width = num(v.frameWidth);
      out.height = num(v.frameHeight);
      out.freeze_count = num(v.freezeCount);
      out.freeze_s = clamp(num(v.totalFreezesDuration), 0, 1e6, 3);
      out.frames_dropped = num(v.framesDropped);
      out.jitter_buffer_ms = clamp(scale(ratio(delta(v, pv, 'jitterBufferDelay'),
                                         delta(v, pv, 'jitterBufferEmittedCount')), 1000),
                                   0, 60000, 1);
      out.decode_ms = clamp(scale(ratio(delta(v, pv, 'totalDecodeTime'),
                                        delta(v, pv, 'framesDecoded')), 1000), 0, 10000, 2);
    } else if (d.outV) {  // the publishing leg: what this person sent
      const o = d.outV, po = prev.outV;
      out.fps = clamp(rate(num(o.framesEncoded), po ? num(po.framesEncoded) : null, dt),
                      0, 240, 2);
      out.width = num(o.frameWidth);
      out.height = num(o.frameHeight);
      if (d.remote) {
        out.loss_fraction = clamp(num(d.remote.fractionLost), 0, 1, 4);
        out.jitter_ms = clamp(scale(num(d.remote.jitter), 1000), 0, 60000, 1);
      }
    }
    if (d.inA) {
      out.concealed_pct = clamp(scale(ratio(delta(d.inA, prev.inA, 'concealedSamples'),
                                            delta(d.inA, prev.inA, 'totalSamplesReceived')),
                                      100), 0, 100, 2);
    }
    for (const k in out) if (out[k] === null || out[k] === undefined) delete out[k];
    return out;
  }

  async function collectStats() {
    if (P.__vcStatsOwner !== statsId) return;
    const now = Date.now();
    const frames = Array.from(doc.querySelectorAll('iframe'));
    await Promise.all(frames.map(async function (f) {
      const key = legKey(f);
      const W = f.contentWindow;
      const pc = W && W.__vcPc;
      if (!key || !pc || pc.connectionState !== 'connected') return;
      let report;
      try { report = await pc.getStats(); } catch (e) { return; }
      const d = digest(report);
      const prev = pc.__vcPrevStats;
      pc.__vcPrevStats = {d: d, t: now};
      if (!prev) return;
      const dt = (now - prev.t) / 1000;
      if (dt < 0.5) return;
      P.__vcStatsBuf.push(statsSample(key, d, prev.d, dt, now));
    }));
    const MAX = 60;  // what the server accepts in one batch (it allows 64)
    if (P.__vcStatsBuf.length > MAX) P.__vcStatsBuf.splice(0, P.__vcStatsBuf.length - MAX);
  }

  async function sendStats() {
    if (P.__vcStatsOwner !== statsId) return;
    if (P.__vcStatsPause && Date.now() < P.__vcStatsPause) { P.__vcStatsBuf.length = 0; return; }
    const samples = P.__vcStatsBuf.splice(0, P.__vcStatsBuf.length);
    if (!samples.length) return;
    try {
      const r = await P.fetch(CFG.offerUrl, {
        method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({type: 'stats', token: CFG.token, sent_at: Date.now(),
                              samples: samples}),
      });
      P.__vcStatsLog.push([Date.now(), r.status]);
      // Shed politely: a busy or rate-limiting server is left alone for as long as it asks,
      // and what was measured meanwhile is dropped, not piled up.
      if (r.status === 429 || r.status === 503) {
        const wait = parseInt(r.headers.get('Retry-After') || '10', 10);
        P.__vcStatsPause = Date.now() + 1000 * (isFinite(wait) ? wait : 10);
      }
    } catch (e) { P.__vcStatsLog.push([Date.now(), 'error']); }
    if (P.__vcStatsLog.length > 50) P.__vcStatsLog.splice(0, 25);
  }

  tick();
  setInterval(tick, 50);
  setInterval(collectStats, 1000);
  setInterval(sendStats, 4000);
})();
