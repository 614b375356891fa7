"""The server half of the capacity benchmark: our relay behind real aiortc peer connections.

Run as its own process (``python bench/_capacity_server.py``), ideally pinned to one core. It
hosts what the app's media loop hosts for a call, minus Streamlit: one `Participant` per
person (a video and an audio `TrackHub`, fed by a SENDONLY publish connection: one VP8 and one
Opus decode per publisher) and one receive-only connection per `Slot` (two `RelayTrack`s: one
VP8 and one Opus encode per subscriber). Every connection lives on one asyncio loop, as in the
app. ICE is restricted to 127.0.0.1 (`videochat.compat.aioice`).

Signalling: JSON lines over a loopback TCP socket; the first line on stdout is ``{"port": P}``.
Requests ``{"op": ...}``: ``join`` (room, name → pid; binds the slots of everyone in the room),
``publish`` / ``subscribe`` (an SDP offer → the answer), ``stats`` (frame counters of hubs and
relay tracks) and ``quit``. The benchmark and each of its client processes have a control
connection of their own; the server also stops when the last of them closes, so a crashed
benchmark never leaves it behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

from bench._common import udp_socket_queues  # noqa: E402
from videochat import eventloop  # noqa: E402
from videochat.compat import aioice as ice  # noqa: E402
from videochat.compat import aiortc as compat  # noqa: E402
from videochat.media.participant import Participant  # noqa: E402
from videochat.media.relay import HubInput  # noqa: E402

logger = logging.getLogger(__name__)


class RelayServer:
    """Rooms of participants and their peer connections, driven by one control connection."""

    def __init__(self, transcode: bool = False) -> None:
        # transcode: every subscriber decoded and encoded again, as before forwarding existed
        self.transcode = transcode
        self.participants: dict[str, Participant] = {}
        self.pcs: list[RTCPeerConnection] = []
        self.publish_pcs: list[RTCPeerConnection] = []
        self.inputs: list[HubInput] = []
        self.done = asyncio.Event()
        self.connections = 0  # the benchmark's and each client process's

    # -- control -------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not self.done.is_set():
                line = await reader.readline()
                if not line:
                    break
                req = json.loads(line)
                try:
                    reply = await self.dispatch(req)
                except Exception as exc:  # noqa: BLE001 - reported to the client, not fatal
                    logger.exception("request %s failed", req.get("op"))
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            self.connections -= 1
            if self.connections == 0:  # everyone left (or crashed): never linger
                self.done.set()
            writer.close()

    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "join":
            return self.join(str(req["room"]), str(req["name"]))
        if op == "publish":
            return await self.publish(self.participants[req["pid"]], req["sdp"], req["type"])
        if op == "subscribe":
            owner = self.participants[req["pid"]]
            return await self.subscribe(owner, str(req["publisher"]), req["sdp"], req["type"])
        if op == "stats":
            out = self.stats()
            if req.get("reset"):  # the next read covers only what follows
                for p in self.participants.values():
                    for s in p.slots:
                        s.video.relay_delays.clear()
                        s.video.first_frame_delays.clear()
            return out
        if op == "quit":  # the benchmark's own connection ends the run
            self.done.set()
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    # -- rooms ---------------------------------------------------------------------------
    def join(self, room: str, name: str) -> dict[str, Any]:
        me = Participant(room, name)
        for other in self.participants.values():
            if other.room == room:
                me.free_slot().bind(other)
                other.free_slot().bind(me)
        self.participants[me.id] = me
        return {"pid": me.id}

    async def publish(self, p: Participant, sdp: str, kind: str) -> dict[str, Any]:
        pc = RTCPeerConnection()
        self.pcs.append(pc)
        self.publish_pcs.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            hub = p.video_hub if track.kind == "video" else p.audio_hub
            sink = hub.sink()
            sink.addTrack(track)
            sink.start()
            self.inputs.append(sink)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def subscribe(self, owner: Participant, publisher: str, sdp: str,
                        kind: str) -> dict[str, Any]:
        slot = owner.slot_for(publisher)
        if slot is None:
            raise ValueError(f"{owner.name} has no slot bound to {publisher}")
        pc = RTCPeerConnection()
        self.pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        if self.transcode:
            slot.video.route = slot.audio.route = lambda: "transcoded"
        sender = pc.addTrack(slot.video)
        compat.on_keyframe_request(sender, slot.video.keyframe_requested)
        pc.addTrack(slot.audio)
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    def stats(self) -> dict[str, Any]:
        out = []
        for p in self.participants.values():
            out.append({
                "pid": p.id, "name": p.name, "room": p.room,
                "video_in": p.video_hub.frames_in, "audio_in": p.audio_hub.frames_in,
                "slots": [{
                    "publisher": s.publisher_id, "video_out": s.video.frames_out,
                    "audio_out": s.audio.frames_out,
                    # frames the relay skipped for this subscriber because its encoder lagged
                    "video_skipped": s.video._sub.dropped,
                    "video_forwarded": s.video.forwarded_out,
                    "audio_forwarded": s.audio.forwarded_out,
                    "delivery": s.video.delivery,
                    "relay_ms": [round(d * 1000, 3) for d in s.video.relay_delays],
                    "first_frame_s": [round(d, 3) for d in s.video.first_frame_delays],
                } for s in p.slots],
                "video_decoded": p.video_hub.decoded_in, "audio_decoded": p.audio_hub.decoded_in,
                "keyframe_requests": p.video_hub.keyframe_requests,
            })
        states = [pc.connectionState for pc in self.pcs]
        # aiortc's decoded-frame queue of each publish leg (unbounded): where a saturated
        # server's backlog, and so its latency, builds up before the relay's bounded mailbox.
        backlog = [sink._track._queue.qsize() for sink in self.inputs
                   if sink._track is not None and hasattr(sink._track, "_queue")]
        # ... and the encoded frames waiting for aiortc's decoder thread (also unbounded)
        undecoded = [q.qsize() for pc in self.publish_pcs for r in pc.getReceivers()
                     if (q := getattr(r, "_RTCRtpReceiver__decoder_queue", None)) is not None]
        drops, queue = udp_socket_queues()
        return {"participants": out, "pcs": len(states),
                "udp_drops": drops, "udp_queue_max_bytes": queue,
                "connected": sum(s == "connected" for s in states),
                "input_backlog_max": max(backlog, default=0),
                "decoder_backlog_max": max(undecoded, default=0)}

    async def close(self) -> None:
        for sink in self.inputs:
            sink.stop()
        for p in self.participants.values():
            p.close()
        await asyncio.gather(*(pc.close() for pc in self.pcs), return_exceptions=True)


async def serve() -> None:
    ice.restrict_host_addresses(["127.0.0.1"])
    compat.track_peer_connections()  # as videochat.compat.install() does in the app
    relay = RelayServer(transcode="--transcode" in sys.argv)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", 0, limit=2**24)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    await relay.done.wait()
    server.close()
    await asyncio.wait_for(relay.close(), 15)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    at = sys.argv.index("--loop") + 1 if "--loop" in sys.argv else 0
    eventloop.run(serve(), "asyncio" if at and sys.argv[at] == "asyncio" else None)


if __name__ == "__main__":
    main()
