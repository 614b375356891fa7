"""One client process of the capacity benchmark: plays the participants of the rooms it is given.

Run by bench/capacity.py (``python bench/_capacity_client.py --port P ...``), several at once:
one Python process playing every participant saturated its one core (one GIL) at ~16
participants in rooms of 2, before the server did. Each process has its own shared encoders
and its own control connection to the server; every room lives in one process, so a receiver
always knows its publishers' bitstreams (`SharedEncoder.stamp_of`).

Commands are JSON lines on stdin, each answered by one JSON line on stdout:
``add_room`` (room, size), ``flowing`` (has every receive leg read a frame?), ``mark`` (start
a measurement), ``collect`` (what every leg received since the mark) and ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._capacity_media import (  # noqa: E402
    ClientParticipant,
    Control,
    SharedEncoder,
    close_participant,
    publish,
    subscribe,
)
from bench._common import pct, udp_socket_queues  # noqa: E402
from videochat import eventloop  # noqa: E402
from videochat.compat import aioice as ice  # noqa: E402

logger = logging.getLogger(__name__)
LAG_TICK_S = 0.05
CONTROL_LIMIT = 2**24  # the server's stats reply lists every relay delay: far over 64 KiB


class Client:
    def __init__(self, control: Control, video: SharedEncoder, audio: SharedEncoder) -> None:
        self.control, self.video, self.audio = control, video, audio
        self.people: list[ClientParticipant] = []
        self._mark: dict[int, tuple[int, ...]] = {}
        self._mark_at = self._cpu0 = 0.0
        self._frames0 = 0
        self._drops0 = 0
        self.lags_ms: list[float] = []

    async def watch_loop(self) -> None:
        """How late a 50 ms timer fires: a client whose loop lags reads its sockets late."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.lags_ms.append(max(0.0, (loop.time() - due) * 1000.0))

    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "add_room":
            await self.add_room(str(req["room"]), int(req["size"]))
            return {"ok": True}
        if op == "flowing":
            legs = [leg for p in self.people for leg in p.legs]
            return {"flowing": all(leg.probe.latencies_ms for leg in legs)}
        if op == "mark":
            self._mark = {id(leg): leg.snapshot() for p in self.people for leg in p.legs}
            self._mark_at, self._cpu0 = time.monotonic(), time.process_time()
            self._frames0 = self.video.frames
            self._drops0 = udp_socket_queues()[0]
            self.lags_ms.clear()
            return {"ok": True}
        if op == "collect":
            return self.collect()
        raise ValueError(f"unknown op {op!r}")

    async def add_room(self, room: str, size: int) -> None:
        new = []
        for i in range(size):
            name = f"{room}-p{i}"
            reply = await self.control.call("join", room=room, name=name)
            new.append(ClientParticipant(name, room, reply["pid"]))
        self.people.extend(new)
        for p in new:
            await publish(p, self.control, self.video, self.audio)
        for p in new:
            for other in new:
                if other is not p:
                    await subscribe(p, other, self.control, self.video)

    def collect(self) -> dict[str, Any]:
        dt = time.monotonic() - self._mark_at
        drops, queue = udp_socket_queues()
        legs, latencies = [], []
        for p in self.people:
            for leg in p.legs:
                b = self._mark.get(id(leg), (0, 0, 0, 0, 0, 0))
                a = leg.snapshot()
                legs.append({"seen": a[0] - b[0], "missing": a[1] - b[1],
                             "unreadable": a[2] - b[2], "audio": a[4] - b[4],
                             "decoded": a[5] - b[5]})
                latencies.extend(round(x, 2) for x in leg.probe.latencies_ms[b[3]:a[3]])
        return {
            "dt": dt, "legs": legs, "latencies_ms": latencies,
            "cpu_pct": 100.0 * (time.process_time() - self._cpu0) / dt if dt else 0.0,
            "source_fps": (self.video.frames - self._frames0) / dt if dt else 0.0,
            "send_drops": sum(t.dropped for p in self.people for t in p.tracks),
            "udp_drops": drops - self._drops0, "udp_queue_max_bytes": queue,
            "loop_lag_ms": {"p95": pct(self.lags_ms, 0.95), "max": max(self.lags_ms, default=0)},
        }

    async def close(self) -> None:
        await asyncio.gather(*(close_participant(p) for p in self.people),
                             return_exceptions=True)
        await self.video.stop()
        await self.audio.stop()


async def serve(args: argparse.Namespace) -> None:
    ice.restrict_host_addresses(["127.0.0.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port, limit=CONTROL_LIMIT)
    control = Control(reader, writer)
    video = SharedEncoder("video", args.width, args.height, args.fps)
    audio = SharedEncoder("audio")
    video.start()
    audio.start()
    client = Client(control, video, audio)
    lag_watch = asyncio.ensure_future(client.watch_loop())
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break  # the benchmark went away: never linger
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            try:
                reply = await client.dispatch(req)
            except Exception as exc:  # noqa: BLE001 - reported to the benchmark
                logger.exception("request %s failed", req.get("op"))
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        lag_watch.cancel()
        await client.close()
        control.close()
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=20.0)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default=eventloop.available())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = ap.parse_args()
    eventloop.run(serve(args), args.loop)


if __name__ == "__main__":
    main()
