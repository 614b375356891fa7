// Restart watch: installed once into the call page's top document by companion.js, which sets
// window.__vcRestartCfg = {boot, bootUrl, chatUrl, rejoin, room, pid, token} on every run.
// Why (issue 17): when the app process restarts, Streamlit's frontend reconnects to the new
// process on its own, into a new session that knows nothing of the call: an empty join form,
// or a second seat under the same name. Instead:
//  1. every reconnect of Streamlit's socket (`_stcore/stream`) made while this page is in a
//     call is held until the server is checked;
//  2. when the socket closes (or the server stops answering), a banner says "Server restarting
//     — reconnecting…" and /_vc/boot is polled every 150 ms: a NEW boot id means a new process,
//     so the tab reloads with its rejoin token (its own seat back, no click); the SAME boot id
//     means the same process (a network blip), so Streamlit may reconnect, and the watch ends
//     only once that socket has stayed open for 2 s and the boot id is still the same (a
//     process shutting down may still answer for a moment);
//  3. what is typed in the banner meanwhile waits in the tab's sessionStorage ('vc-outbox',
//     each message with a client id) and is posted to /_vc/chat once the tab is seated again;
//     the server claims each id, so a message is delivered once.
// Chat text is only ever set with textContent.
(function () {
  const W = window;
  if (W.__vcWatch) return;
  W.__vcWatch = true;
  const doc = W.document;
  const S = W.sessionStorage;
  const OUTBOX = 'vc-outbox';
  const REJOIN = 'vc-rejoin';
  const OPEN_FOR_MS = 2000;
  const cfg = function () { return W.__vcRestartCfg || {}; };
  const state = {out: null, allow: false, current: null, misses: 0, log: []};
  W.__vcRestart = state;  // read by the tests and the benchmark
  const note = function (what) { state.log.push([Date.now(), what]); };

  function inCall() {
    for (const f of doc.querySelectorAll('iframe')) {
      if (((f.title || '') + ' ' + (f.src || '')).indexOf('webrtc_streamer') >= 0) return true;
    }
    return !!state.out;  // mid-outage Streamlit may have cleared the page already
  }

  // --- 1. Streamlit's socket: find it, hold its reconnects --------------------------------------
  const Native = W.WebSocket;
  function isStream(url) { return String(url).indexOf('_stcore/stream') >= 0; }
  function track(ws) {
    if (state.current === ws) return;
    state.current = ws;
    ws.addEventListener('open', function () { ws.__vcOpenedAt = Date.now(); });
    if (ws.readyState === 1) ws.__vcOpenedAt = ws.__vcOpenedAt || Date.now();
    ws.addEventListener('close', function () {
      if (state.current === ws) { note('socket closed'); outage('socket closed'); }
    });
  }
  const send = Native.prototype.send;
  Native.prototype.send = function () {
    if (isStream(this.url)) track(this);
    return send.apply(this, arguments);
  };
  function Held(url, protocols) {
    const make = function (u) {
      return protocols === undefined ? new Native(u) : new Native(u, protocols);
    };
    if (!isStream(url) || !inCall()) return make(url);
    if (!state.allow) {
      // A reconnect before we know which server answers: fail it (Streamlit retries later;
      // we either let it through or reload the page meanwhile).
      note('reconnect held');
      outage('reconnect');
      return make(String(url).replace(/_stcore\/stream.*$/, '_vc/held'));
    }
    state.allow = false;  // one attempt per "same server" answer
    note('reconnect allowed');
    const ws = make(url);
    track(ws);
    return ws;
  }
  Held.prototype = Native.prototype;
  ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED'].forEach(function (k) { Held[k] = Native[k]; });
  W.WebSocket = Held;

  // --- 2. the outage: banner, boot polling, reload or restore ---------------------------------
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  async function bootCheck(ms) {
    const c = cfg();
    if (!c.bootUrl) return null;
    const ctl = new AbortController();
    const t = setTimeout(function () { ctl.abort(); }, ms);
    try {
      const r = await W.fetch(c.bootUrl, {cache: 'no-store', signal: ctl.signal});
      return r.ok ? await r.json() : null;
    } catch (e) { return null; } finally { clearTimeout(t); }
  }

  function reload() {
    const c = cfg();
    const token = c.rejoin || S.getItem(REJOIN) || '';
    const q = new URLSearchParams(W.location.search);
    if (c.room) q.set('room', c.room);
    q.set('join', '1');
    if (token) q.set('rejoin', token);
    note('reload');
    state.reloading = true;
    S.setItem('vc-reloaded-at', String(Date.now()));  // for the benchmark's phases
    W.location.replace(W.location.pathname + '?' + q.toString());
  }

  function outage(why) {
    if (state.out || state.reloading || !inCall()) return;
    state.out = {since: Date.now(), why: why};
    state.allow = false;
    banner(true);
    poll();
  }

  async function poll() {
    while (state.out && !state.reloading) {
      const r = await bootCheck(1000);
      const boot = cfg().boot;
      if (r && r.boot && boot && r.boot !== boot) { reload(); return; }
      if (r && r.boot === boot && !r.stopping) {
        const ws = state.current;
        const open = ws && ws.readyState === 1 && ws.__vcOpenedAt;
        if (open && Date.now() - ws.__vcOpenedAt >= OPEN_FOR_MS) {
          note('restored');
          state.out = null;
          banner(false);
          flushOutbox();
          return;
        }
        if (!open) state.allow = true;  // the same process: Streamlit may reconnect to it
      }
      await sleep(150);
    }
  }

  // A quiet page sends nothing on its socket for a while: also notice a server that stopped
  // answering (two misses in a row, a busy server may miss one).
  async function idleWatch() {
    for (;;) {
      await sleep(1000);
      if (state.out || state.reloading || !inCall()) continue;
      const r = await bootCheck(1500);
      state.misses = r ? 0 : state.misses + 1;
      if (r && r.boot && cfg().boot && r.boot !== cfg().boot) { reload(); return; }
      if (state.misses >= 2 || (r && r.stopping)) outage('server not answering');
    }
  }
  idleWatch();
  // The companion calls this when a connection failed: is the server itself gone?
  W.__vcCheckServer = function () {
    bootCheck(1000).then(function (r) {
      if (!r) outage('connection failed');
      else if (r.boot && cfg().boot && r.boot !== cfg().boot) reload();
    });
  };

  function banner(show) {
    let b = doc.getElementById('vc-restart');
    if (!show) { if (b) b.style.display = 'none'; return; }
    if (!b) {
      b = doc.createElement('div');
      b.id = 'vc-restart';
      b.style.cssText = 'position:fixed;top:0;left:0;right:0;z-index:1000001;padding:0.8rem;' +
        'background:#fff8e1;border-bottom:2px solid #f0b429;font:15px sans-serif;color:#5c3c00';
      const title = doc.createElement('div');
      title.style.cssText = 'font-weight:600;margin-bottom:0.4rem';
      title.textContent = 'Server restarting \u2014 reconnecting\u2026';
      const form = doc.createElement('form');
      const input = doc.createElement('input');
      input.id = 'vc-restart-chat';
      input.placeholder = 'Chat: your message is sent when the server is back';
      input.maxLength = 2000;
      input.style.cssText = 'width:60%;padding:0.3rem';
      const btn = doc.createElement('button');
      btn.type = 'submit';
      btn.textContent = 'Send';
      form.appendChild(input);
      form.appendChild(btn);
      form.addEventListener('submit', function (e) {
        e.preventDefault();
        if (input.value.trim()) { queue(input.value); input.value = ''; }
      });
      const list = doc.createElement('div');
      list.id = 'vc-restart-outbox';
      b.appendChild(title);
      b.appendChild(form);
      b.appendChild(list);
      doc.body.appendChild(b);
    }
    b.style.display = 'block';
    drawOutbox();
  }

  // --- 3. the chat outbox -----------------------------------------------------------------------
  function readOutbox() {
    try { return JSON.parse(S.getItem(OUTBOX) || '[]'); } catch (e) { return []; }
  }
  function writeOutbox(items) { S.setItem(OUTBOX, JSON.stringify(items)); drawOutbox(); }

  function newId() {
    const a = new Uint8Array(16);
    W.crypto.getRandomValues(a);
    return Array.from(a, function (x) { return x.toString(16).padStart(2, '0'); }).join('');
  }

  function queue(text) {
    const items = readOutbox();
    items.push({id: newId(), room: cfg().room, text: text});
    writeOutbox(items);
  }
  W.__vcQueueChat = queue;

  function drawOutbox() {
    const list = doc.getElementById('vc-restart-outbox');
    if (!list) return;
    list.textContent = '';
    readOutbox().forEach(function (m) {
      const row = doc.createElement('div');
      row.className = 'vc-outbox-item';
      row.textContent = m.text + ' \u00b7 waiting to be sent';
      list.appendChild(row);
    });
  }

  let flushing = false;
  async function flushOutbox() {
    if (flushing || state.out) return;
    flushing = true;
    try {
      for (let attempt = 0; attempt < 60; attempt++) {
        const c = cfg();
        const items = readOutbox().filter(function (m) { return m.room === c.room; });
        if (!items.length || !c.chatUrl || !c.token) return;
        let r = null;
        try {
          const resp = await W.fetch(c.chatUrl, {
            method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({pid: c.pid, token: c.token, room: c.room,
                                  messages: items.slice(0, 20).map(function (m) {
                                    return {id: m.id, text: m.text};
                                  })}),
          });
          if (resp.ok) r = await resp.json();
          else if (resp.status === 400 || resp.status === 403) note('outbox http ' + resp.status);
        } catch (e) { r = null; }
        if (r) {
          const done = new Set([].concat(r.delivered || [], r.duplicate || [], r.refused || []));
          writeOutbox(readOutbox().filter(function (m) { return !done.has(m.id); }));
          note('outbox delivered ' + done.size);
          if (!(r.retry || []).length && readOutbox().length === 0) return;
        }
        await sleep(500);
      }
    } finally { flushing = false; }
  }
  W.__vcFlushOutbox = flushOutbox;
})();
