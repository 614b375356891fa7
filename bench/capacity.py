"""Capacity benchmark: how many participants the server relays at >= 15 fps, <= 1 % loss and
p95 latency <= 200 ms, and what one call costs it.

Two processes on loopback, by default sharing the whole box as the app would (``--pin`` puts
each on its own core, os.sched_setaffinity, as the first version of this benchmark did):

* the *server* (bench/_capacity_server.py, CPU 0) hosts our relay as the app's media loop does:
  per participant a publish connection into a video and an audio `TrackHub` and one connection
  per slot with two `RelayTrack`s, all aiortc `RTCPeerConnection`s on one asyncio loop, ICE on
  127.0.0.1. Subscribers on the publisher's quality are forwarded (no decode, no encode);
  ``--transcode`` decodes every publisher and encodes for every subscriber, as the relay did
  before forwarding, for a before/after in the same run;
* the *clients* (``--client-procs`` processes of bench/_capacity_client.py, CPU 1; rooms are
  dealt out to them in turn) play the participants (bench/_capacity_media.py): one SENDONLY leg
  each, publishing a `BotVideoTrack` at the settings' capture size (default 640x480@20) and a
  tone, and one RECVONLY leg per other participant in its room, which reads every frame's
  stamp and counts fps, frame-counter gaps (loss) and end-to-end latency. A client encodes the
  bot media once and sends the same packets on every publish leg, and tells a forwarded frame
  by its bytes instead of decoding it, so the clients do not run out of CPU before the server
  does (one client process alone saturates at ~16 participants in rooms of 2).

Steps add `--rooms-per-step` rooms (2 people each by default) at a time; each step waits for
media on every new leg, warms up, then holds. A step passes when every receive leg's fps >= 15,
the frame loss is <= 1 % and the p95 end-to-end latency read from the bots' burnt-in stamps is
<= 200 ms; the run stops at the first failing step or at --max-participants. The capacity is the
last passing step. Latency is given twice: end to end from the bots' stamps (client encode,
server, and for transcoded frames client decode, all on this box) and, for forwarded frames,
the server's own relay
latency (arrival of an encoded frame -> its subscriber's sender takes it). No Streamlit, Redis or
MongoDB is involved (backend: none).

    python bench/capacity.py [--room-size 2] [--max-participants 60] [--rooms-per-step 4]
                             [--client-procs 4]
    python bench/capacity.py --calls 2,3 [--profile 8]   # CPU of one call, before and after

Writes bench/results/capacity-rooms{N}[-transcode].json (or capacity-calls.json) and prints one
summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from videochat import eventloop  # noqa: E402

SERVER_SCRIPT = ROOT / "bench" / "_capacity_server.py"
CLIENT_SCRIPT = ROOT / "bench" / "_capacity_client.py"
CLIENT_BACKLOG_BYTES = 64 * 1024  # one socket's unread datagrams: ~0.5 s of a 1 Mbps leg
CLIENT_LAG_MS = 50.0  # p95 lateness of a client's 50 ms timer
PIPE_LIMIT = 2**24  # a stats reply or a collect lists every delay measured: far over 64 KiB


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process (sched_setaffinity is per thread on Linux); threads
    started later inherit it from their creator."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


@dataclass
class CapacityConfig:
    width: int = 640
    height: int = 480
    fps: int = 20
    room_size: int = 2
    max_participants: int = 24
    hold_s: float = 12.0
    warmup_s: float = 4.0
    connect_timeout_s: float = 30.0
    min_fps: float = 15.0
    max_loss_pct: float = 1.0
    max_latency_p95_ms: float = 200.0
    """A stop rule: p95 end-to-end latency from the bots' stamps."""
    rooms_per_step: int = 1
    transcode: bool = False
    """Every subscriber transcoded, as before forwarding (the 'before' of a before/after)."""
    profile_s: float = 0.0
    """py-spy the server for this long during the last step's hold (0: no profile)."""
    confirm: int = 1
    """How many times a failing step is measured again before it counts as failed."""
    server_cpus: tuple[int, ...] | None = None
    client_cpus: tuple[int, ...] | None = None
    client_procs: int = 1
    """Client processes playing the participants (each room lives in one of them)."""
    loop: eventloop.LoopKind = "uvloop"
    """The event loop of the server and client processes: the app's (uvloop when installed,
    see videochat/eventloop.py) unless asked otherwise, for a before/after."""
    client_nice: int = 10
    """The clients yield the CPU to the server: on a shared box the load generator, not the
    server under test, is the one to wait (a client that falls behind marks its step
    client_bound, never a server limit)."""


def capture_default() -> tuple[int, int, int]:
    from videochat.settings import Settings

    return Settings.load().capture


# -------------------------------------------------------------------------------------------
# the server process


class ServerProcess:
    def __init__(self, cpus: tuple[int, ...] | None, transcode: bool = False,
                 loop: eventloop.LoopKind = "uvloop") -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="capacity-server-", suffix=".log",
                                               delete=False)
        pre: Callable[[], None] | None = None
        if cpus:
            cpu_set = set(cpus)

            def pre() -> None:
                os.sched_setaffinity(0, cpu_set)  # before exec: every later thread inherits

        self.tail = ""
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), *(["--transcode"] if transcode else []),
             "--loop", loop],
            stdout=subprocess.PIPE, stderr=self.log,
            preexec_fn=pre, cwd=str(ROOT),
        )

    async def port(self, timeout_s: float = 30.0) -> int:
        import json

        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not line:
            raise RuntimeError(f"capacity server did not start: {self.log_tail()}")
        return int(json.loads(line)["port"])

    def log_tail(self, n: int = 2000) -> str:
        if self.log.closed:
            return self.tail
        try:
            return Path(self.log.name).read_text()[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.tail = self.log_tail()
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


class ClientProcess:
    """One bench/_capacity_client.py process: its rooms' participants, driven over a pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Any) -> None:
        self.proc, self.log = proc, log
        self.rooms = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, port: int, cfg: CapacityConfig) -> ClientProcess:
        log = tempfile.NamedTemporaryFile(prefix="capacity-client-", suffix=".log", delete=False)
        cpu_set = set(cfg.client_cpus or ())

        def pre() -> None:
            if cpu_set:
                os.sched_setaffinity(0, cpu_set)
            if cfg.client_nice:
                os.nice(cfg.client_nice)

        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENT_SCRIPT), "--port", str(port), "--width", str(cfg.width),
            "--height", str(cfg.height), "--fps", str(cfg.fps), "--loop", cfg.loop,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, preexec_fn=pre,
            cwd=str(ROOT), limit=PIPE_LIMIT)
        client = cls(proc, log)
        await client._reply(30.0)  # {"ready": true}
        return client

    async def _reply(self, timeout_s: float) -> dict[str, Any]:
        import json

        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"capacity client exited: {self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"capacity client: {reply['error']}")
        return reply

    async def call(self, op: str, timeout_s: float = 60.0, **kw: Any) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
            await self.proc.stdin.drain()
            return await self._reply(timeout_s)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log.name).read_text()[-n:]
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("quit", timeout_s=20)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# -------------------------------------------------------------------------------------------
# measuring one step


def _cpu_s(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _busy_per_cpu() -> list[float]:
    import psutil

    return [t.user + t.nice + t.system + t.irq + t.softirq + t.steal
            for t in psutil.cpu_times(percpu=True)]


def _thread_cpu_s(proc: Any, tid: int) -> float:
    for th in proc.threads():
        if th.id == tid:
            return float(th.user_time + th.system_time)
    return 0.0


async def measure(participants: int, clients: list[ClientProcess], server: Any,
                  control: Any, hold_s: float, cfg: CapacityConfig) -> dict[str, Any]:

    await asyncio.gather(*(c.call("mark") for c in clients))
    stats0 = await control.call("stats", reset=True)
    s0, l0 = _cpu_s(server), _thread_cpu_s(server, server.pid)
    busy0 = _busy_per_cpu()
    t0 = time.monotonic()
    profiler = start_profile(server.pid, cfg.profile_s) if cfg.profile_s > 0 else None
    await asyncio.sleep(hold_s)
    dt = time.monotonic() - t0
    s1, l1 = _cpu_s(server), _thread_cpu_s(server, server.pid)
    busy = [round(100.0 * (b - a) / dt, 1) for a, b in zip(busy0, _busy_per_cpu(), strict=True)]
    collected = await asyncio.gather(*(c.call("collect") for c in clients))
    stats1 = await control.call("stats")
    profile = await finish_profile(profiler) if profiler is not None else None

    fps: list[float] = []
    lat: list[float] = []
    seen = missing = unreadable = decoded = 0
    for reply in collected:
        for leg in reply["legs"]:
            fps.append(leg["seen"] / reply["dt"])
            seen += leg["seen"]
            missing += leg["missing"]
            unreadable += leg["unreadable"]
            decoded += leg["decoded"]
        lat.extend(reply["latencies_ms"])
    # A frame whose stamp was damaged arrived, yet shows as a gap in the counter once the
    # next stamp reads: only the gaps not explained by such frames were lost.
    lost = max(0, missing - unreadable)
    sent = seen + lost
    loss = 100.0 * lost / sent if sent else 100.0

    def skipped(stats: dict[str, Any]) -> int:
        return sum(s["video_skipped"] for p in stats["participants"] for s in p["slots"])

    from bench._common import pct

    drops = sum(r["send_drops"] for r in collected)
    client_cpus = [round(r["cpu_pct"], 1) for r in collected]
    source_fps = min((r["source_fps"] for r in collected), default=0.0)
    slots = [s for p in stats1["participants"] for s in p["slots"] if s["publisher"]]
    relay_ms = [d for s in slots for d in s["relay_ms"]]
    first_s = [d for s in slots for d in s["first_frame_s"]]
    deliveries = [s["delivery"] for s in slots]
    row: dict[str, Any] = {
        "participants": participants, "receive_legs": len(fps),
        "server_cpu_pct": round(100.0 * (s1 - s0) / dt, 1),
        "server_loop_thread_pct": round(100.0 * (l1 - l0) / dt, 1),
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        "client_cpu_pct": round(sum(client_cpus), 1),
        "client_cpu_pct_per_process": client_cpus,
        "fps_min": round(min(fps), 2) if fps else 0.0,
        "fps_median": round(statistics.median(fps), 2) if fps else 0.0,
        "source_fps": round(source_fps, 2),
        "frames_received": seen, "frames_lost": lost, "frames_unreadable": unreadable,
        # frames the clients had to decode: the server's own encodings (transcoded legs)
        "frames_decoded_by_clients": decoded,
        "loss_pct": round(loss, 3),
        # frames that arrived with a stamp failing its CRC: decoded from a broken reference
        # (a packet lost on the way) or badly quantised, i.e. visibly damaged
        "damaged_pct": round(100.0 * unreadable / seen, 3) if seen else 0.0,
        "latency_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "n": len(lat)},
        # the server alone: a forwarded frame's arrival -> its subscriber's sender took it
        "relay_latency_ms": {"p50": pct(relay_ms, 0.5), "p95": pct(relay_ms, 0.95),
                             "max": max(relay_ms, default=None), "n": len(relay_ms)},
        "forwarded_legs": deliveries.count("forwarded"),
        "transcoded_legs": deliveries.count("transcoded"),
        "server_video_decoded": sum(p["video_decoded"] for p in stats1["participants"])
        - sum(p["video_decoded"] for p in stats0["participants"]),
        "keyframe_requests": sum(p["keyframe_requests"] for p in stats1["participants"]),
        "relay_skipped_frames": skipped(stats1) - skipped(stats0),
        "client_send_drops": drops,
        "server_pcs": stats1["pcs"], "server_pcs_connected": stats1["connected"],
        # datagrams the kernel dropped because a reader fell behind, and its largest backlog
        "server_udp_drops": stats1["udp_drops"] - stats0["udp_drops"],
        "server_udp_queue_max_bytes": stats1["udp_queue_max_bytes"],
        "client_udp_drops": sum(r["udp_drops"] for r in collected),
        "client_udp_queue_max_bytes": max((r["udp_queue_max_bytes"] for r in collected),
                                          default=0),
        "client_loop_lag_p95_ms": max((r["loop_lag_ms"]["p95"] or 0.0 for r in collected),
                                      default=0.0),
        "server_input_backlog_frames": stats1["input_backlog_max"],
        "server_decoder_backlog_frames": stats1["decoder_backlog_max"],
        "hold_s": round(dt, 2),
        # How busy each core was, whoever used it: the box is shared with other work, so a
        # server core far busier than the server itself means the step ran contended.
        "cpu_busy_pct": busy, "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    reasons = []
    if row["fps_min"] < cfg.min_fps:
        reasons.append(f"min fps {row['fps_min']:.1f} < {cfg.min_fps:g}")
    if loss > cfg.max_loss_pct:
        reasons.append(f"frame loss {loss:.2f} % > {cfg.max_loss_pct:g} %")
    p95 = row["latency_ms"]["p95"]
    if p95 is not None and p95 > cfg.max_latency_p95_ms:
        reasons.append(f"latency p95 {p95:.0f} ms > {cfg.max_latency_p95_ms:g} ms")
    if first_s:
        row["first_frame_after_bind_s"] = {"p50": pct(first_s, 0.5), "max": max(first_s),
                                           "n": len(first_s)}
    if profile is not None:
        row["profile"] = profile
    row["pass"] = not reasons
    row["reason"] = "; ".join(reasons)
    # A failing step is only the server's limit if every client still had headroom: kept up
    # with its sockets (no drops, no backlog of more than ~0.1 s of its traffic), its loop
    # on time and its camera at rate.
    row["client_bound"] = (max(client_cpus, default=0.0) > 90.0
                           or row["source_fps"] < 0.95 * cfg.fps
                           or row["client_udp_drops"] > 0
                           or row["client_udp_queue_max_bytes"] > CLIENT_BACKLOG_BYTES
                           or row["client_loop_lag_p95_ms"] > CLIENT_LAG_MS)
    return row


# -------------------------------------------------------------------------------------------
# profiling the server (py-spy, from requirements-dev.txt)

PROFILE_RATE_HZ = 100
# Where the server's time goes, by the function a sample was in (self time) or under
# (inclusive): named groups for the summary line.
PROFILE_GROUPS = {
    "vp8_encode": ("encode (aiortc/codecs/vpx.py",),
    "opus_encode": ("encode (aiortc/codecs/opus.py",),
    "decode": ("decoder_worker (aiortc/rtcrtpreceiver.py",),
    "audio_level": ("compute_audio_level_dbov",),
    "scale_reformat": ("reformat (",),
    "srtp": ("srtp", "pylibsrtp"),
    "relay": ("videochat/media/relay.py",),
}


def start_profile(pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path, float] | None:
    """py-spy record of the server for `seconds` (collapsed stacks, threads, no idle)."""
    import shutil

    exe = shutil.which("py-spy")
    if exe is None:
        return None
    out = Path(tempfile.mkstemp(prefix="capacity-profile-", suffix=".txt")[1])
    proc = subprocess.Popen(
        [exe, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r",
         str(PROFILE_RATE_HZ), "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, out, seconds


async def finish_profile(handle: tuple[subprocess.Popen[bytes], Path, float]
                         ) -> dict[str, Any]:
    proc, out, seconds = handle
    try:
        _o, err = await asyncio.to_thread(proc.communicate, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not finish"}
    try:
        text = out.read_text()
    except OSError:
        text = ""
    finally:
        with contextlib.suppress(OSError):
            out.unlink()
    if not text:
        return {"error": f"py-spy recorded nothing: {err.decode(errors='replace')[-300:]}"}
    return summarise_profile(text, max(1, round(seconds)))


def summarise_profile(collapsed: str, seconds: float, top: int = 12) -> dict[str, Any]:
    """% of one core per function (self time) and per named group (inclusive), from py-spy's
    collapsed stacks: each sample of a busy thread is 1/rate s of one core."""
    per_sample = 100.0 / (seconds * PROFILE_RATE_HZ)
    leaves: dict[str, int] = {}
    groups = dict.fromkeys(PROFILE_GROUPS, 0)
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
        for name, needles in PROFILE_GROUPS.items():
            if any(n in f for f in frames for n in needles):
                groups[name] += count
    ranked = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return {
        "busy_pct_of_one_core": round(total * per_sample, 1),
        "groups_pct_of_one_core": {k: round(v * per_sample, 1) for k, v in groups.items()},
        "top_self_pct_of_one_core": [[f, round(c * per_sample, 1)] for f, c in ranked],
    }


# -------------------------------------------------------------------------------------------
# the run


async def wait_flowing(clients: list[ClientProcess], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = await asyncio.gather(*(c.call("flowing") for c in clients))
        if all(r["flowing"] for r in replies):
            return True
        await asyncio.sleep(0.2)
    return False


async def run_capacity(cfg: CapacityConfig,
                       progress: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
    """Add rooms step by step until a step fails or `max_participants`; the per-step rows."""
    import psutil

    from bench._capacity_media import Control

    server = ServerProcess(cfg.server_cpus, cfg.transcode, cfg.loop)
    clients: list[ClientProcess] = []
    participants = 0
    steps: list[dict[str, Any]] = []
    control = None
    error = None
    try:
        port = await server.port()
        control = Control(*await asyncio.open_connection("127.0.0.1", port, limit=PIPE_LIMIT))
        sproc = psutil.Process(server.proc.pid)
        k = 0
        while participants + cfg.room_size <= cfg.max_participants:
            t0 = time.monotonic()
            touched: list[ClientProcess] = []
            for _ in range(cfg.rooms_per_step):
                if participants + cfg.room_size > cfg.max_participants:
                    break
                k += 1
                # Rooms are dealt out in turn; a process starts with its first room.
                index = (k - 1) % max(1, cfg.client_procs)
                if index == len(clients):
                    clients.append(await ClientProcess.start(port, cfg))
                client = clients[index]
                await client.call("add_room", room=f"cap{k}", size=cfg.room_size)
                client.rooms += 1
                participants += cfg.room_size
                if client not in touched:
                    touched.append(client)
            flowing = await wait_flowing(touched, cfg.connect_timeout_s)
            connect_s = time.monotonic() - t0
            if not flowing:
                row = {"participants": participants, "pass": False, "client_bound": False,
                       "reason": f"media did not flow on every new leg within "
                                 f"{cfg.connect_timeout_s:g} s"}
            else:
                await asyncio.sleep(cfg.warmup_s)
                row = await measure(participants, clients, sproc, control, cfg.hold_s, cfg)
                for _ in range(cfg.confirm):
                    if row["pass"]:
                        break
                    # The box is shared: a failing step must fail again to end the run.
                    again = await measure(participants, clients, sproc, control, cfg.hold_s,
                                          cfg)
                    again["first_attempt"] = row
                    row = again
            row["step"] = len(steps) + 1
            row["connect_s"] = round(connect_s, 2)
            steps.append(row)
            if progress:
                progress(row)
            if not row["pass"]:
                break
    except Exception as exc:  # noqa: BLE001 - a partial result is still worth writing
        error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        if control is not None:
            with contextlib.suppress(Exception):
                await control.call("quit", timeout_s=5)
            control.close()
        await asyncio.to_thread(server.stop)
    passing = [s for s in steps if s.get("pass")]
    result: dict[str, Any] = {
        "config": asdict(cfg), "steps": steps, "error": error,
        "client_processes": len(clients),
        "capacity_participants": passing[-1]["participants"] if passing else 0,
        "stopped_by": (steps[-1]["reason"] if steps and not steps[-1]["pass"]
                       else error or "max_participants"),
        "failing_step_client_bound": bool(steps and not steps[-1]["pass"]
                                          and steps[-1].get("client_bound")),
    }
    result["server_exit_code"] = server.proc.returncode
    if error:
        result["server_log_tail"] = server.log_tail()
    if cfg.server_cpus and len(cfg.server_cpus) == 1:
        result["two_core_extrapolation"] = extrapolate(passing, cfg.room_size)
    return result


def extrapolate(passing: list[dict[str, Any]], room_size: int) -> dict[str, Any]:
    """Linear per-participant cost of the last passing step scaled to the 2-core box.

    An extrapolation, not a measurement: codec work runs on aiortc's threads (libvpx releases
    the GIL) and can use both cores, but RTP/SRTP handling and the relay run on the one asyncio
    loop thread, which no second core helps; Streamlit's own work and the browsers are left out.
    """
    if not passing:
        return {"participants": 0, "note": "no passing step"}
    last = passing[-1]
    n = last["participants"]
    per_cpu = last["server_cpu_pct"] / n
    per_loop = last["server_loop_thread_pct"] / n
    by_total = 200.0 / per_cpu if per_cpu else math.inf
    by_loop = 100.0 / per_loop if per_loop else math.inf
    est = min(by_total, by_loop)
    est_rooms = int(est // room_size) * room_size
    return {
        "participants": est_rooms,
        "server_cpu_pct_per_participant": round(per_cpu, 1),
        "loop_thread_pct_per_participant": round(per_loop, 1),
        "limit": "loop thread" if by_loop < by_total else "both cores",
        "note": "extrapolated from the one-core run, not measured: 200 % CPU / per-participant "
                "cost, capped by the single asyncio loop thread at 100 %; excludes Streamlit",
    }


def _show(row: dict[str, Any]) -> None:
    lat = row.get("latency_ms", {})
    relay = row.get("relay_latency_ms", {})
    loop_pct = row.get("server_loop_thread_pct", "-")
    verdict = "PASS" if row["pass"] else "FAIL " + row["reason"]
    print(f"step {row['step']}: {row['participants']} participants  "
          f"server {row.get('server_cpu_pct', '-')} % (loop {loop_pct} %)  "
          f"rss {row.get('server_rss_mb', '-')} MB  client {row.get('client_cpu_pct', '-')} %  "
          f"fps min/med {row.get('fps_min', '-')}/{row.get('fps_median', '-')}  "
          f"loss {row.get('loss_pct', '-')} %  damaged {row.get('damaged_pct', '-')} %  "
          f"latency p50/p95 {lat.get('p50') or 0:.0f}/{lat.get('p95') or 0:.0f} ms  "
          f"relay p50/p95 {relay.get('p50') or 0:.2f}/{relay.get('p95') or 0:.2f} ms  "
          f"fwd/trans {row.get('forwarded_legs')}/{row.get('transcoded_legs')}  "
          f"cores busy {row.get('cpu_busy_pct')}  load {row.get('load_avg_1m')}  {verdict}",
          flush=True)


def _profile_text(row: dict[str, Any]) -> str:
    prof = row.get("profile") or {}
    groups = prof.get("groups_pct_of_one_core") or {}
    shown = ", ".join(f"{k} {v}" for k, v in groups.items() if v >= 0.5)
    return f"profile busy {prof.get('busy_pct_of_one_core', '-')} % [{shown}]" if prof else ""


def run_calls(base: CapacityConfig, sizes: list[int]) -> int:
    """CPU of one call of each size, transcoded (before) and forwarded (after), same run."""
    from bench._common import write

    out: dict[str, Any] = {"config": asdict(base), "calls": []}
    parts = []
    for n in sizes:
        figures = {}
        for transcode in (True, False):
            cfg = CapacityConfig(**{**asdict(base), "room_size": n, "max_participants": n,
                                    "rooms_per_step": 1, "confirm": 0,
                                    "transcode": transcode})
            result = eventloop.run(run_capacity(cfg, _show), cfg.loop)
            step = result["steps"][-1] if result["steps"] else {}
            mode = "transcoded" if transcode else "forwarded"
            figures[mode] = step
            out["calls"].append({"participants": n, "mode": mode, "step": step,
                                 "error": result["error"]})
            if _profile_text(step):
                print(f"  {n} people {mode}: {_profile_text(step)}", flush=True)
        before = figures["transcoded"].get("server_cpu_pct")
        after = figures["forwarded"].get("server_cpu_pct")
        relay = figures["forwarded"].get("relay_latency_ms", {})
        parts.append(f"{n} people {before} % -> {after} % of a core "
                     f"({(after or 0) / n:.1f} % per participant; relay p50 "
                     f"{relay.get('p50') or 0:.2f} ms)")
    out["backend"] = "none: relay + aiortc only (no Redis/MongoDB, no Streamlit)"
    path = write("capacity-calls", out)
    print(f"one call's server CPU ({base.width}x{base.height}@{base.fps}, {base.loop}, "
          f"transcoded -> forwarded): " + "; ".join(parts)
          + f"; load avg {os.getloadavg()[0]:.1f} -> {path}")
    return 0


def main() -> int:
    cores = os.cpu_count() or 1
    w, h, fps = capture_default()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--room-size", type=int, default=2)
    ap.add_argument("--max-participants", type=int, default=60)
    ap.add_argument("--rooms-per-step", type=int, default=1)
    ap.add_argument("--hold", type=float, default=12.0, help="seconds measured per step")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds after media flows")
    ap.add_argument("--confirm", type=int, default=1,
                    help="re-measure a failing step this many times before stopping")
    ap.add_argument("--pin", action="store_true",
                    help="pin the server to core 0 and the client to core 1")
    ap.add_argument("--transcode", action="store_true",
                    help="transcode every subscriber (the relay before forwarding)")
    ap.add_argument("--calls", default="",
                    help="e.g. 2,3: CPU of one call per size, transcoded then forwarded")
    ap.add_argument("--client-procs", type=int, default=4,
                    help="client processes playing the participants (rooms dealt in turn)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default=eventloop.available(),
                    help="event loop of the server and clients (default: the app's)")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="py-spy the server for this many seconds of each measured hold")
    args = ap.parse_args()
    pin = cores >= 2 and args.pin
    cfg = CapacityConfig(width=w, height=h, fps=fps, room_size=args.room_size,
                         max_participants=args.max_participants, hold_s=args.hold,
                         warmup_s=args.warmup, confirm=args.confirm,
                         rooms_per_step=args.rooms_per_step, transcode=args.transcode,
                         profile_s=args.profile, client_procs=max(1, args.client_procs),
                         loop=args.loop,
                         server_cpus=(0,) if pin else None, client_cpus=(1,) if pin else None)
    if cfg.client_cpus:
        pin_process(set(cfg.client_cpus))
    if args.calls:
        return run_calls(cfg, [int(n) for n in args.calls.split(",")])
    load_before = os.getloadavg()
    result = eventloop.run(run_capacity(cfg, _show), cfg.loop)
    result["backend"] = "none: relay + aiortc only (no Redis/MongoDB, no Streamlit)"
    result["pinned"] = {"server_cpus": cfg.server_cpus, "client_cpus": cfg.client_cpus}
    result["load_avg_before"] = load_before
    from bench._common import write

    name = f"capacity-rooms{cfg.room_size}" + ("-transcode" if cfg.transcode else "")
    path = write(name, result)
    cap = result["capacity_participants"]
    last: dict[str, Any] = next((s for s in reversed(result["steps"]) if s.get("pass")), {})
    lat = last.get("latency_ms", {})
    relay = last.get("relay_latency_ms", {})
    first = last.get("first_frame_after_bind_s", {})
    where = ("server on core 0, bots on core 1" if pin
             else "server and bots sharing the 2-core box")
    where += f", {result['client_processes']} client processes, {cfg.loop}"
    print(f"capacity ({w}x{h}@{fps}, rooms of {cfg.room_size}, "
          f"{'transcoded' if cfg.transcode else 'forwarded'}, {where}, no DB backend): "
          f"{cap} participants pass fps >= {cfg.min_fps:g}, loss <= {cfg.max_loss_pct:g} % "
          f"and p95 latency <= {cfg.max_latency_p95_ms:g} ms (at {cap}: min fps "
          f"{last.get('fps_min', 0)}, loss {last.get('loss_pct', 0)} %, latency p50/p95 "
          f"{lat.get('p50') or 0:.0f}/{lat.get('p95') or 0:.0f} ms, relay p50/p95 "
          f"{relay.get('p50') or 0:.2f}/{relay.get('p95') or 0:.2f} ms, first frame after "
          f"bind p50/max {first.get('p50') or 0:.2f}/{first.get('max') or 0:.2f} s, server "
          f"CPU {last.get('server_cpu_pct', 0)} %, client CPU {last.get('client_cpu_pct', 0)} %"
          f"{', ' + _profile_text(last) if _profile_text(last) else ''}); "
          f"stopped by: {result['stopped_by']}; load avg {os.getloadavg()[0]:.1f} -> {path}")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
