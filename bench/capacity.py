"""Capacity benchmark: how many participants one server core relays at >= 15 fps and <= 1 % loss.

Two processes on loopback, each pinned to its own core (os.sched_setaffinity):

* the *server* (bench/_capacity_server.py, CPU 0) hosts our relay as the app's media loop does:
  per participant a publish connection into a video and an audio `TrackHub` (one VP8 + one Opus
  decode per publisher) and one connection per slot with two `RelayTrack`s (one VP8 + one Opus
  encode per subscriber), all aiortc `RTCPeerConnection`s on one asyncio loop, ICE on 127.0.0.1;
* the *client* (this process, CPU 1) plays the participants (bench/_capacity_media.py): one
  SENDONLY leg each, publishing a `BotVideoTrack` at the settings' capture size (default
  640x480@20) and a tone, and one RECVONLY leg per other participant in its room, which decodes
  every frame, reads its burnt-in stamp and counts fps, frame-counter gaps (loss) and
  end-to-end latency. The client encodes the bot media once and sends the same packets on
  every publish leg, so it does not run out of CPU before the server does.

Steps add one room (2 people by default) at a time; each step waits for media on every new
leg, warms up, then holds. A step passes when every receive leg's fps >= 15 and the frame loss
is <= 1 %; the run stops at the first failing step or at --max-participants. The capacity is
the last passing step. Because aiortc queues without bound before our relay, a saturated server
first shows as latency climbing to seconds with fps and loss still passing, so the capacity is
also given with p95 latency <= 1 s and <= 1 % damaged frames (the headline), and the 2-core
figure is extrapolated from that step. No Streamlit, Redis or MongoDB is involved (backend: none).

    python bench/capacity.py [--room-size 2] [--max-participants 24] [--hold 12] [--warmup 4]

Writes bench/results/capacity.json and prints one summary line.
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
SERVER_SCRIPT = ROOT / "bench" / "_capacity_server.py"


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
    healthy_latency_p95_ms: float = 1000.0
    """Not a stop rule: aiortc queues decoded input frames without bound, so a saturated
    server first shows as latency growing by seconds while fps and loss still pass. The
    capacity is also reported with this bound on p95 latency (and damaged frames <= the loss
    bound), and extrapolated from that step."""
    confirm: int = 1
    """How many times a failing step is measured again before it counts as failed."""
    server_cpus: tuple[int, ...] | None = None
    client_cpus: tuple[int, ...] | None = None


def capture_default() -> tuple[int, int, int]:
    from videochat.settings import Settings

    return Settings.load().capture


# -------------------------------------------------------------------------------------------
# the server process


class ServerProcess:
    def __init__(self, cpus: tuple[int, ...] | None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="capacity-server-", suffix=".log",
                                               delete=False)
        pre: Callable[[], None] | None = None
        if cpus:
            cpu_set = set(cpus)

            def pre() -> None:
                os.sched_setaffinity(0, cpu_set)  # before exec: every later thread inherits

        self.tail = ""
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT)], stdout=subprocess.PIPE, stderr=self.log,
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


async def measure(people: list[Any], video: Any, server: Any, control: Any, hold_s: float,
                  cfg: CapacityConfig) -> dict[str, Any]:
    import psutil

    me = psutil.Process()
    legs = [leg for p in people for leg in p.legs]
    before = {id(leg): leg.snapshot() for leg in legs}
    stats0 = await control.call("stats")
    s0, l0, c0 = _cpu_s(server), _thread_cpu_s(server, server.pid), _cpu_s(me)
    busy0 = _busy_per_cpu()
    enc0, t0 = video.frames, time.monotonic()
    await asyncio.sleep(hold_s)
    dt = time.monotonic() - t0
    s1, l1, c1 = _cpu_s(server), _thread_cpu_s(server, server.pid), _cpu_s(me)
    busy = [round(100.0 * (b - a) / dt, 1) for a, b in zip(busy0, _busy_per_cpu(), strict=True)]
    enc1 = video.frames
    stats1 = await control.call("stats")

    fps, lat = [], []
    seen = missing = unreadable = 0
    for leg in legs:
        b, a = before[id(leg)], leg.snapshot()
        fps.append((a[0] - b[0]) / dt)
        seen += a[0] - b[0]
        missing += a[1] - b[1]
        unreadable += a[2] - b[2]
        lat.extend(leg.probe.latencies_ms[b[3]:a[3]])
    # A frame whose stamp was damaged arrived, yet shows as a gap in the counter once the
    # next stamp reads: only the gaps not explained by such frames were lost.
    lost = max(0, missing - unreadable)
    sent = seen + lost
    loss = 100.0 * lost / sent if sent else 100.0

    def skipped(stats: dict[str, Any]) -> int:
        return sum(s["video_skipped"] for p in stats["participants"] for s in p["slots"])

    from bench._common import pct

    drops = sum(t.dropped for p in people for t in p.tracks)
    client_cpu = 100.0 * (c1 - c0) / dt
    row: dict[str, Any] = {
        "participants": len(people), "receive_legs": len(legs),
        "server_cpu_pct": round(100.0 * (s1 - s0) / dt, 1),
        "server_loop_thread_pct": round(100.0 * (l1 - l0) / dt, 1),
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        "client_cpu_pct": round(client_cpu, 1),
        "fps_min": round(min(fps), 2) if fps else 0.0,
        "fps_median": round(statistics.median(fps), 2) if fps else 0.0,
        "source_fps": round((enc1 - enc0) / dt, 2),
        "frames_received": seen, "frames_lost": lost, "frames_unreadable": unreadable,
        "loss_pct": round(loss, 3),
        # frames that arrived with a stamp failing its CRC: decoded from a broken reference
        # (a packet lost on the way) or badly quantised, i.e. visibly damaged
        "damaged_pct": round(100.0 * unreadable / seen, 3) if seen else 0.0,
        "latency_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "n": len(lat)},
        "relay_skipped_frames": skipped(stats1) - skipped(stats0),
        "client_send_drops": drops,
        "server_pcs": stats1["pcs"], "server_pcs_connected": stats1["connected"],
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
    row["pass"] = not reasons
    row["reason"] = "; ".join(reasons)
    # A failing step is only the server's limit if the client still had headroom.
    row["client_bound"] = client_cpu > 90.0 or row["source_fps"] < 0.95 * cfg.fps
    return row


# -------------------------------------------------------------------------------------------
# the run


async def add_room(k: int, cfg: CapacityConfig, control: Any, video: Any, audio: Any,
                   people: list[Any]) -> list[Any]:
    from bench._capacity_media import ClientParticipant, publish, subscribe

    room = f"cap{k}"
    new = []
    for i in range(cfg.room_size):
        name = f"{room}-p{i}"
        reply = await control.call("join", room=room, name=name)
        new.append(ClientParticipant(name, room, reply["pid"]))
    people.extend(new)
    for p in new:
        await publish(p, control, video, audio)
    for p in new:
        for other in new:
            if other is not p:
                await subscribe(p, other, control)
    return new


async def wait_flowing(new: list[Any], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    legs = [leg for p in new for leg in p.legs]
    while time.monotonic() < deadline:
        if all(leg.probe.latencies_ms for leg in legs):
            return True
        await asyncio.sleep(0.2)
    return False


async def run_capacity(cfg: CapacityConfig,
                       progress: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
    """Add rooms step by step until a step fails or `max_participants`; the per-step rows."""
    import psutil

    from bench._capacity_media import Control, SharedEncoder, close_participant
    from videochat.compat import aioice as ice

    ice.restrict_host_addresses(["127.0.0.1"])
    server = ServerProcess(cfg.server_cpus)
    video = SharedEncoder("video", cfg.width, cfg.height, cfg.fps)
    audio = SharedEncoder("audio")
    people: list[Any] = []
    steps: list[dict[str, Any]] = []
    control = None
    error = None
    try:
        port = await server.port()
        control = Control(*await asyncio.open_connection("127.0.0.1", port))
        sproc = psutil.Process(server.proc.pid)
        video.start()
        audio.start()
        k = 0
        while len(people) + cfg.room_size <= cfg.max_participants:
            k += 1
            t0 = time.monotonic()
            new = await add_room(k, cfg, control, video, audio, people)
            flowing = await wait_flowing(new, cfg.connect_timeout_s)
            connect_s = time.monotonic() - t0
            if not flowing:
                row = {"participants": len(people), "pass": False, "client_bound": False,
                       "reason": f"media did not flow on every new leg within "
                                 f"{cfg.connect_timeout_s:g} s"}
            else:
                await asyncio.sleep(cfg.warmup_s)
                row = await measure(people, video, sproc, control, cfg.hold_s, cfg)
                for _ in range(cfg.confirm):
                    if row["pass"]:
                        break
                    # The box is shared: a failing step must fail again to end the run.
                    again = await measure(people, video, sproc, control, cfg.hold_s, cfg)
                    again["first_attempt"] = row
                    row = again
            row["step"] = k
            row["connect_s"] = round(connect_s, 2)
            steps.append(row)
            if progress:
                progress(row)
            if not row["pass"]:
                break
    except Exception as exc:  # noqa: BLE001 - a partial result is still worth writing
        error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.gather(*(close_participant(p) for p in people), return_exceptions=True)
        await video.stop()
        await audio.stop()
        if control is not None:
            with contextlib.suppress(Exception):
                await control.call("quit", timeout_s=5)
            control.close()
        await asyncio.to_thread(server.stop)
        ice.restrict_host_addresses([])
    passing = [s for s in steps if s.get("pass")]
    result: dict[str, Any] = {
        "config": asdict(cfg), "steps": steps, "error": error,
        "capacity_participants_one_server_core": passing[-1]["participants"] if passing else 0,
        "stopped_by": (steps[-1]["reason"] if steps and not steps[-1]["pass"]
                       else error or "max_participants"),
        "failing_step_client_bound": bool(steps and not steps[-1]["pass"]
                                          and steps[-1].get("client_bound")),
    }
    result["server_exit_code"] = server.proc.returncode
    if error:
        result["server_log_tail"] = server.log_tail()
    healthy = [s for s in passing
               if (s["latency_ms"]["p95"] or math.inf) <= cfg.healthy_latency_p95_ms
               and s["damaged_pct"] <= cfg.max_loss_pct]
    result["capacity_participants_one_server_core_latency_bounded"] = (
        healthy[-1]["participants"] if healthy else 0)
    result["two_core_extrapolation"] = extrapolate(healthy, cfg.room_size)
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


def main() -> int:
    cores = os.cpu_count() or 1
    w, h, fps = capture_default()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--room-size", type=int, default=2)
    ap.add_argument("--max-participants", type=int, default=24)
    ap.add_argument("--hold", type=float, default=12.0, help="seconds measured per step")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds after media flows")
    ap.add_argument("--confirm", type=int, default=1,
                    help="re-measure a failing step this many times before stopping")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server/client to cores")
    args = ap.parse_args()
    pin = cores >= 2 and not args.no_pin
    cfg = CapacityConfig(width=w, height=h, fps=fps, room_size=args.room_size,
                         max_participants=args.max_participants, hold_s=args.hold,
                         warmup_s=args.warmup, confirm=args.confirm,
                         server_cpus=(0,) if pin else None, client_cpus=(1,) if pin else None)
    if cfg.client_cpus:
        pin_process(set(cfg.client_cpus))
    load_before = os.getloadavg()

    def show(row: dict[str, Any]) -> None:
        lat = row.get("latency_ms", {})
        loop_pct = row.get("server_loop_thread_pct", "-")
        verdict = "PASS" if row["pass"] else "FAIL " + row["reason"]
        print(f"step {row['step']}: {row['participants']} participants  "
              f"server {row.get('server_cpu_pct', '-')} % (loop {loop_pct} %)  "
              f"rss {row.get('server_rss_mb', '-')} MB  client {row.get('client_cpu_pct', '-')} %  "
              f"fps min/med {row.get('fps_min', '-')}/{row.get('fps_median', '-')}  "
              f"loss {row.get('loss_pct', '-')} %  damaged {row.get('damaged_pct', '-')} %  "
              f"latency p50/p95 "
              f"{lat.get('p50') or 0:.0f}/{lat.get('p95') or 0:.0f} ms  "
              f"backlog in/dec {row.get('server_input_backlog_frames')}/"
              f"{row.get('server_decoder_backlog_frames')}  "
              f"cores busy {row.get('cpu_busy_pct')}  load {row.get('load_avg_1m')}  {verdict}",
              flush=True)

    result = asyncio.run(run_capacity(cfg, show))
    result["backend"] = "none: relay + aiortc only (no Redis/MongoDB, no Streamlit)"
    result["pinned"] = {"server_cpus": cfg.server_cpus, "client_cpus": cfg.client_cpus}
    result["load_avg_before"] = load_before
    from bench._common import write

    path = write("capacity", result)
    cap = result["capacity_participants_one_server_core"]
    ext = result["two_core_extrapolation"]
    capl = result["capacity_participants_one_server_core_latency_bounded"]
    last: dict[str, Any] = next((s for s in reversed(result["steps"]) if s.get("pass")), {})
    lat = last.get("latency_ms", {})
    print(f"capacity ({w}x{h}@{fps}, rooms of {cfg.room_size}, no DB backend): one server core "
          f"holds {capl} participants with latency p95 <= {cfg.healthy_latency_p95_ms:.0f} ms "
          f"and <= {cfg.max_loss_pct:g} % damaged frames, "
          f"{cap} by fps >= {cfg.min_fps:g} and loss <= {cfg.max_loss_pct:g} % alone (at {cap}: "
          f"min fps {last.get('fps_min', 0)}, loss "
          f"{last.get('loss_pct', 0)} %, latency p50/p95 {lat.get('p50') or 0:.0f}/"
          f"{lat.get('p95') or 0:.0f} ms, server CPU {last.get('server_cpu_pct', 0)} %); "
          f"2-core box ~{ext['participants']} by extrapolation from {capl} "
          f"({ext.get('limit', '-')}); stopped by: {result['stopped_by']}; "
          f"load avg {os.getloadavg()[0]:.1f} -> {path}")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
