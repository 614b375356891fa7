"""Run the real app and real headless Chromium participants, isolated on loopback.

Everything runs inside a network namespace that holds only `lo`: the app (with its embedded
Valkey and SecantusDB children), its ICE restricted to 127.0.0.1, and Chromium (launched
through a tiny wrapper that enters the namespace; Playwright talks to it over pipes, so the
driver itself can stay outside). No packet leaves loopback, and Chromium's mDNS host
candidates have no network to go to. Used by the end-to-end tests, the benchmarks and the QA
runner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from videochat.exceptions import VideoChatError

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--allow-loopback-in-peer-connection",
    "--disable-dev-shm-usage",
]
# No --autoplay-policy flag: participants meet Chromium's default policy, as a person does
# (sound needs a gesture; the page must still show video without one).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class HarnessError(VideoChatError, RuntimeError):
    pass


RESTART_MODES = ("graceful", "kill")
GRACEFUL_EXIT_S = 10.0  # issue 17: a graceful stop ends within 10 s


def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class NetNamespace:
    """A network namespace with only loopback, deleted on exit."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"vc-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> NetNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def kill_all(self) -> None:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in out.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class AppProcess:
    """`streamlit run app.py` as a child process, optionally inside a namespace."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 8599,
        netns: NetNamespace | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.tls = tls  # (certificate, key): serve HTTPS with Streamlit's own TLS support
        self.state_dir = state_dir
        self.port = port
        self.netns = netns
        self.extra_env = dict(env or {})
        self.log_path = log_path or state_dir / "app.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("REDIS_URL", "MONGODB_URI", "VIDEOCHAT_"))}
        env.update({
            "VIDEOCHAT_STATE_DIR": str(self.state_dir),
            "VIDEOCHAT_ICE_ADDRESSES": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        })
        if self.tls:
            env["STREAMLIT_SERVER_SSL_CERT_FILE"] = str(self.tls[0])
            env["STREAMLIT_SERVER_SSL_KEY_FILE"] = str(self.tls[1])
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"),
               "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
        return (self.netns.prefix() if self.netns else []) + cmd

    def start(self, timeout: float = 90.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.command(), cwd=PROJECT_ROOT, env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_healthy(timeout)

    def _probe(self) -> bool:
        code = ("import ssl, urllib.request as u; c = ssl.create_default_context();"
                "c.check_hostname = False; c.verify_mode = ssl.CERT_NONE;"
                f"u.urlopen('{self.url}/_stcore/health', timeout=1, context=c)")
        cmd = (self.netns.prefix() if self.netns else []) + [sys.executable, "-c", code]
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"app exited with {self.proc.returncode}; see {self.log_path}")
            if self._probe():
                return
            time.sleep(0.3)
        raise HarnessError(f"app not healthy after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self, mode: str, *, timeout: float = 90.0) -> float:
        """Stop the app as a deploy (`graceful`: SIGTERM) or a crash (`kill`: SIGKILL) does,
        and start it again from the same folder on the same port; returns how long the old
        process took to exit. Its embedded servers (own sessions) survive either way (a
        graceful stop hands them over for `VIDEOCHAT_HANDOVER_S`; with 0 they are stopped and
        the new process starts them again on their data and ports); the new process adopts
        them."""
        if mode not in RESTART_MODES:
            raise HarnessError(f"restart mode {mode!r}: must be one of {', '.join(RESTART_MODES)}")
        if self.proc is None or self.proc.poll() is not None:
            raise HarnessError(f"the app is not running; see {self.log_path}")
        started = time.monotonic()
        if mode == "kill":
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        else:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(GRACEFUL_EXIT_S + 5)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"the app did not exit within {GRACEFUL_EXIT_S + 5:.0f} s of "
                                   f"SIGTERM; see {self.log_path}") from None
        exited = time.monotonic() - started
        self.start(timeout)
        return exited
    def kill(self) -> None:
        """SIGKILL the app process alone, as a crash or the OOM killer would: its embedded
        servers live on (the next start adopts them)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> None:
        """SIGTERM the app process alone (a deploy, `systemctl stop`) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def documents(self, collection: str, query: Mapping[str, Any] | None = None,
                  ) -> list[dict[str, Any]]:
        """Documents of one collection of the app's MongoDB (see `read_documents`)."""
        return read_documents(self.netns, self.state_dir, collection, query)

    def events(self, since: float, kinds: list[str]) -> list[dict[str, Any]]:
        """The app's call events of `kinds` since `since` (epoch seconds), oldest first, read
        from its MongoDB by a child process in the app's namespace (the embedded servers
        listen on that namespace's loopback)."""
        return read_events(self.netns, self.state_dir, since, kinds)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def read_events(netns: NetNamespace | None, state_dir: Path, since: float,
                kinds: list[str]) -> list[dict[str, Any]]:
    """Call events of `kinds` since `since` (epoch seconds) from the MongoDB of the app whose
    state folder is `state_dir`: [{kind, at (epoch s), data, participant}], oldest first."""
    code = (
        "import json,sys,datetime as d;"
        "from videochat.backends.services import Services;from videochat.settings import Settings;"
        "s=Services.from_settings(Settings.load());"
        f"q={{'kind':{{'$in':{kinds!r}}},'at':{{'$gte':d.datetime.fromtimestamp({since},d.UTC)}}}};"
        "print(json.dumps([{'kind':e['kind'],'at':e['at'].timestamp(),'data':e.get('data',{}),"
        "'participant':e.get('participant')} for e in s.db.events.find(q).sort('at',1)]))"
    )
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(state_dir))
    cmd = (netns.prefix() if netns else []) + [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise HarnessError(f"reading events failed: {out.stderr.strip()[-500:]}")
    events: list[dict[str, Any]] = json.loads(out.stdout or "[]")
    return events


def read_documents(netns: NetNamespace | None, state_dir: Path, collection: str,
                   query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The documents of `collection` matching `query` in the app's MongoDB, in insertion
    order, with dates as epoch seconds; read by a child process in the app's namespace."""
    code = (
        "import json,sys,datetime as d;"
        "from videochat.backends.services import Services;from videochat.settings import Settings;"
        "s=Services.from_settings(Settings.load());"
        "f=lambda v: v.timestamp() if isinstance(v,d.datetime) else str(v);"
        f"print(json.dumps(list(s.db[{collection!r}].find(json.loads(sys.argv[1]))),default=f))"
    )
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(state_dir))
    cmd = ((netns.prefix() if netns else [])
           + [sys.executable, "-c", code, json.dumps(dict(query or {}))])
    out = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise HarnessError(f"reading {collection} failed: {out.stderr.strip()[-500:]}")
    docs: list[dict[str, Any]] = json.loads(out.stdout or "[]")
    return docs


def chromium_wrapper(netns: NetNamespace | None, folder: Path) -> Path:
    """An executable that starts Debian's Chromium inside the namespace."""
    if not CHROMIUM.exists():
        raise HarnessError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    path = folder / "chromium-in-netns"
    prefix = " ".join(netns.prefix()) + " " if netns else ""
    path.write_text(f'#!/bin/sh\nexec {prefix}{CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return path


# JS run in every frame: what each <video> of a role ("remote": another participant's tile,
# marked by the page's companion; "self": one's own camera) is showing. A tile counts as
# showing frames only while it plays: a paused element still decodes frames (its counters
# grow) but the person sees a blank tile.
VIDEOS_JS = """
(role) => Array.from(document.querySelectorAll('video[data-vc="' + role + '"]')).map(v => ({
  w: v.videoWidth, h: v.videoHeight, paused: v.paused, t: v.currentTime,
  frames: (v.getVideoPlaybackQuality && !v.paused)
    ? v.getVideoPlaybackQuality().totalVideoFrames : 0,
}))
"""


# Init script for every frame of a participant's page: records when remote video advances, so
# timings (first frame, resume after a fault) are read afterwards with ms precision instead of
# being polled from Python.
PROGRESS_JS = """
(() => {
  if (window.__vcProgressInstalled) return;
  window.__vcProgressInstalled = true;
  // Keep every peer connection of this frame, for browser-side stats.
  const Orig = window.RTCPeerConnection;
  if (Orig) {
    window.__vcPCs = [];
    const Wrapped = function (...args) {
      const pc = new Orig(...args);
      window.__vcPCs.push(pc);
      return pc;
    };
    Wrapped.prototype = Orig.prototype;
    Object.setPrototypeOf(Wrapped, Orig);
    window.RTCPeerConnection = Wrapped;
  }
  window.__vcProgress = [];
  let last = -1;
  setInterval(() => {
    let n = 0;
    for (const v of document.querySelectorAll('video[data-vc="remote"]')) {
      if (!v.paused && v.getVideoPlaybackQuality) n += v.getVideoPlaybackQuality().totalVideoFrames;
    }
    if (last >= 0 && n > last) {
      window.__vcProgress.push(Date.now());
      if (window.__vcProgress.length > 20000) window.__vcProgress.shift();
    }
    last = n;
  }, 25);
})();
"""
COLLECT_JS = """
() => {
  const out = [];
  for (const f of document.querySelectorAll('iframe')) {
    try { const p = f.contentWindow.__vcProgress; if (p) out.push(p.slice()); } catch (e) {}
  }
  return out;
}
"""


INBOUND_JS = """
async () => {
  const out = {packetsLost: 0, packetsReceived: 0, framesDecoded: 0};
  for (const f of document.querySelectorAll('iframe')) {
    let pcs;
    try { pcs = f.contentWindow.__vcPCs; } catch (e) { continue; }
    for (const pc of pcs || []) {
      if (pc.connectionState !== 'connected') continue;
      const stats = await pc.getStats();
      stats.forEach(r => {
        if (r.type === 'inbound-rtp') {
          out.packetsLost += r.packetsLost || 0;
          out.packetsReceived += r.packetsReceived || 0;
          out.framesDecoded += r.framesDecoded || 0;
        }
      });
    }
  }
  return out;
}
"""


def inbound_video(page: Any) -> dict[str, int]:
    """The browser's own inbound-rtp counters (audio and video), summed over its connected
    legs; framesDecoded counts video only."""
    result: dict[str, int] = page.evaluate(INBOUND_JS)
    return result


def loss_between(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Loss fraction the browser measured between two `inbound_video` snapshots."""
    lost = after["packetsLost"] - before["packetsLost"]
    got = after["packetsReceived"] - before["packetsReceived"]
    return None if lost + got <= 0 else lost / (lost + got)


def progress_times(page: Any) -> list[float]:
    """Wall-clock times (s) at which any remote video of the page showed a new frame."""
    series: list[list[float]] = page.evaluate(COLLECT_JS)
    return sorted(t / 1000.0 for s in series for t in s)


def first_progress_after(page: Any, t: float, min_frames: int = 3) -> float | None:
    """When video was moving again after `t`: the time of the `min_frames`-th new frame."""
    after = [x for x in progress_times(page) if x > t]
    return after[min_frames - 1] if len(after) >= min_frames else None


def resumed_after_stall(times: list[float], t: float, gap: float = 0.4,
                        min_frames: int = 3) -> float | None:
    """After a kill: frames decoded from the jitter buffer may still land just after `t`, so
    video counts as moving again only after it has stalled (a gap >= `gap`), at the
    `min_frames`-th frame after the stall. No stall within 20 s: the view was not affected."""
    after = [x for x in times if x > t]
    for i in range(1, len(after)):
        if after[i] - after[i - 1] >= gap:
            rest = after[i:]
            return rest[min_frames - 1] if len(rest) >= min_frames else None
    if after and after[-1] - t >= 20 and len(after) >= min_frames:
        return after[min_frames - 1]
    return None


class Browser:
    """One headless Chromium; one context (fake camera, own storage) per participant."""

    def __init__(self, netns: NetNamespace | None) -> None:
        from playwright.sync_api import sync_playwright

        self._tmp = Path(tempfile.mkdtemp(prefix="vc-browser-"))
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=str(chromium_wrapper(netns, self._tmp)), headless=True,
            args=CHROMIUM_FLAGS)

    def new_page(self, *, probe: bool = True, ignore_https_errors: bool = False) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900},
                                           ignore_https_errors=ignore_https_errors)
        if probe:
            context.add_init_script(PROGRESS_JS)
        return context.new_page()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._pw.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


def videos(page: Any, role: str) -> list[dict[str, Any]]:
    """Video elements of `role` ("remote" or "self") across all frames of a page."""
    out: list[dict[str, Any]] = []
    for frame in page.frames:
        with contextlib.suppress(Exception):
            out.extend(frame.evaluate(VIDEOS_JS, role))
    return out


def remote_videos(page: Any) -> list[dict[str, Any]]:
    """Remote video elements across all frames of a page (one per receiving tile)."""
    return videos(page, "remote")


def shown_remote(page: Any) -> dict[str, Any] | None:
    """The remote tile that has shown the most frames (None before any shows a picture)."""
    shown = [v for v in remote_videos(page) if v["w"] > 0]
    return max(shown, key=lambda v: v["frames"], default=None)


def advancing(now: dict[str, Any] | None, before: dict[str, Any] | None) -> bool:
    """Between two reads of one video: it plays, shows a picture, and its clock and frame
    count moved on (what a person sees as moving video)."""
    return bool(now and before and not now["paused"] and now["w"] > 0
                and now["t"] > before["t"] and now["frames"] > before["frames"])


def self_view(page: Any) -> dict[str, Any] | None:
    """One's own camera tile, if the page shows one."""
    own = videos(page, "self")
    return own[0] if own else None


def sound_state(page: Any) -> str | None:
    """'playing', 'blocked' (the page shows "Enable sound") or None (nothing to play yet)."""
    state: str | None = page.evaluate("() => window.__vcSound || null")
    return state


def decoded_frames(page: Any) -> int:
    """The largest decoded-frame count among the page's remote videos."""
    return max((v["frames"] for v in remote_videos(page) if v["w"] > 0), default=0)


@contextlib.contextmanager
def running_app(state_dir: Path, *, port: int = 8599, env: Mapping[str, str] | None = None,
                isolate: bool = True) -> Iterator[tuple[AppProcess, NetNamespace | None]]:
    """The app in a fresh loopback-only namespace (when we may create one)."""
    ns_cm: contextlib.AbstractContextManager[NetNamespace | None] = (
        NetNamespace() if isolate and netns_available() else contextlib.nullcontext())
    with ns_cm as ns:
        app = AppProcess(state_dir, port=port, netns=ns, env=env)
        try:
            app.start()
            yield app, ns
        finally:
            app.stop()
