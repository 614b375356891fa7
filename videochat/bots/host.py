"""Bot participants: synthetic people hosted in the app process, for demos, QA runs and benchmarks.

A bot joins a room through the `RoomRegistry` like a person (``session_id=None``: no browser tab,
so housekeeping never reaps it), and its video and audio hubs are fed by `BotVideoTrack` (moving
test pattern with a burnt-in timestamp and frame counter) and `BotAudioTrack` (a tone). Every
other participant subscribes to those hubs as to anyone else's. A bot has no peer connection, so
the call supervisor never watches it and it never "reconnects": it always delivers.

A bot also *receives*: it reads the relay tracks of its own slots (the frames the relay would
encode for a person in its seat) and, for frames coming from another bot, decodes the stamp. That
gives the relay's added latency (`relay_latency`) and per-publisher frame rates without a browser.

Control from other processes (the QA runner, the command line) goes through Redis, like faults:

* stream ``vc:bots:commands``: entries with field ``cmd`` = JSON ``{"op": "add"|"remove"|"clear",
  "cmd_id", "room", "name"}``;
* hash ``vc:bots:ack:{cmd_id}``: node → JSON ``{ok, error, participant_id}`` (expires);
* hash ``vc:bots:nodes``: node → last heartbeat, so a sender knows someone listens;
* ``vc:bots:claim:{cmd_id}`` (SET NX): one process executes an ``add``. The process that already
  hosts the room claims at once; the others wait `CLAIM_DELAY_S` first, so a bot lands where the
  room's media is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
import redis

from videochat.backends import keys
from videochat.backends.command_stream import CommandStreamConsumer
from videochat.exceptions import BackendUnavailable, NotFound, ValidationError
from videochat.media.bot_tracks import BotAudioTrack, BotVideoTrack, LatencyProbe, decode_stamp
from videochat.media.participant import Participant, Slot
from videochat.media.relay import HubInput
from videochat.media.room import RoomRegistry

logger = logging.getLogger(__name__)

STREAM = keys.BOT_COMMANDS
NODES = keys.BOT_NODES
STREAM_MAXLEN = 1_000
ACK_TTL_S = 600
NODE_ALIVE_S = 5.0
CLAIM_DELAY_S = 0.5
WATCH_SLOTS_S = 0.5
PER_SECOND_KEEP = 3600


ack_key = keys.bot_ack_key
claim_key = keys.bot_claim_key


@dataclass
class BotReception:
    """What one bot received from one publisher through the relay."""

    publisher: str
    frames: int = 0
    first_at: float | None = None
    last_at: float | None = None
    probe: LatencyProbe = field(default_factory=LatencyProbe)
    per_second: dict[int, int] = field(default_factory=dict)
    """Frames received per wall-clock second (the last `PER_SECOND_KEEP` seconds)."""

    def count(self, wall: float, mono: float) -> None:
        self.frames += 1
        self.first_at = self.first_at or mono
        self.last_at = mono
        sec = int(wall)
        self.per_second[sec] = self.per_second.get(sec, 0) + 1
        if len(self.per_second) > PER_SECOND_KEEP:
            del self.per_second[min(self.per_second)]

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "fps": self.fps, "per_second": self.per_second,
                "latency": self.probe.summary()}

    @property
    def fps(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.frames - 1) / (self.last_at - self.first_at)


@dataclass
class Bot:
    participant: Participant
    video: BotVideoTrack
    audio: BotAudioTrack
    inputs: tuple[HubInput, HubInput]
    received: dict[str, BotReception] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    watched: set[int] = field(default_factory=set)


class BotHost:
    """The bots of one app process. Thread-safe; media work is scheduled on `loop`."""

    def __init__(self, registry: RoomRegistry, loop: asyncio.AbstractEventLoop, *,
                 width: int = 640, height: int = 480, fps: float = 20.0) -> None:
        self.registry = registry
        self.loop = loop
        self.size = (width, height)
        self.fps = fps
        self._bots: dict[str, Bot] = {}
        self._lock = threading.Lock()

    def add(self, room: str, name: str, *, size: tuple[int, int] | None = None,
            fps: float | None = None) -> Participant:
        """Join `room` as a bot named `name` (made unique like a person's) and start its media;
        `size` and `fps` default to the host's."""
        video = BotVideoTrack(*(size or self.size), fps=fps or self.fps)  # validates them first
        me = self.registry.join(room, name, session_id=None)
        audio = BotAudioTrack()
        vin, ain = me.video_hub.sink(), me.audio_hub.sink()
        vin.addTrack(video)
        ain.addTrack(audio)
        bot = Bot(me, video, audio, (vin, ain))
        with self._lock:
            self._bots[me.id] = bot
        # Hub inputs must be started on the media loop (they create the hub's reader task there).
        self.loop.call_soon_threadsafe(self._start, bot)
        logger.info("bot %s joined %s", me.name, room)
        return me

    def _start(self, bot: Bot) -> None:
        for hub_input in bot.inputs:
            hub_input.start()
        bot.tasks.append(asyncio.ensure_future(self._watch_slots(bot)))

    async def _watch_slots(self, bot: Bot) -> None:
        """Read every bound slot's video as a subscriber leg would (joins add slots)."""
        while bot.video.readyState == "live":
            for slot in list(bot.participant.slots):
                if id(slot) not in bot.watched:
                    bot.watched.add(id(slot))
                    bot.tasks.append(asyncio.ensure_future(self._receive(bot, slot)))
            await asyncio.sleep(WATCH_SLOTS_S)

    async def _receive(self, bot: Bot, slot: Slot) -> None:
        while bot.video.readyState == "live":
            try:
                frame = await slot.video.recv()
            except Exception:  # noqa: BLE001 - MediaStreamError when the slot closes
                return
            publisher = self.registry.find(slot.publisher_id)
            if publisher is None or not isinstance(frame, av.VideoFrame):
                continue
            rec = bot.received.get(publisher.name)
            if rec is None:
                rec = bot.received[publisher.name] = BotReception(publisher.name)
            rec.count(time.time(), time.monotonic())
            if publisher.session_id is None and decode_stamp(frame) is not None:
                rec.probe.observe(frame)

    def remove(self, participant_id: str, reason: str = "bot_removed") -> bool:
        with self._lock:
            bot = self._bots.pop(participant_id, None)
        if bot is None:
            return False

        def stop() -> None:
            for task in bot.tasks:
                task.cancel()
            for hub_input in bot.inputs:
                hub_input.stop()
            bot.video.stop()
            bot.audio.stop()

        self.loop.call_soon_threadsafe(stop)
        self.registry.leave(participant_id, reason=reason)
        logger.info("bot %s left %s", bot.participant.name, bot.participant.room)
        return True

    def remove_named(self, room: str, name: str | None = None) -> list[str]:
        """Remove the bots of `room` (only the one called `name`, when given); their ids."""
        gone = [b.participant.id for b in self.bots(room)
                if name is None or b.participant.name == name]
        for pid in gone:
            self.remove(pid)
        return gone

    def bots(self, room: str | None = None) -> list[Bot]:
        with self._lock:
            return [b for b in self._bots.values()
                    if room is None or b.participant.room == room]

    def hosts_room(self, room: str) -> bool:
        return room in self.registry.rooms

    def close(self) -> None:
        for bot in self.bots():
            self.remove(bot.participant.id, reason="server_stopping")


def relay_latency(bots: list[Bot]) -> dict[str, float | int | None]:
    """The relay's added latency over every bot-to-bot path: stamp → frame out of the relay
    track of the receiving bot's slot (no encoder, network or browser in between), pooled."""
    probe = LatencyProbe()
    for bot in bots:
        for rec in bot.received.values():
            probe.latencies_ms.extend(rec.probe.latencies_ms)
            probe.frames_seen += rec.probe.frames_seen
            probe.frames_missing += rec.probe.frames_missing
            probe.frames_unreadable += rec.probe.frames_unreadable
    return probe.summary()


# ---------------------------------------------------------------------------------------------
# the control plane


class _HasRegistry(Protocol):
    registry: RoomRegistry


_HOSTS: dict[int, BotHost] = {}


def host_for(registry: RoomRegistry) -> BotHost:
    """The BotHost started for this registry by `start_bot_plane`."""
    host = _HOSTS.get(id(registry))
    if host is None:
        raise NotFound("bots are not enabled in this process (start_bot_plane was not called)")
    return host


def add_bot(rt: _HasRegistry, room: str, name: str = "bot") -> Participant:
    """For the call page's "add a bot" button: a bot joins `room` in this process."""
    return host_for(rt.registry).add(room, name)


def remove_bot(rt: _HasRegistry, participant_id: str) -> bool:
    """For the call page: the bot leaves (its tracks stop); False if it was not a bot here."""
    return host_for(rt.registry).remove(participant_id)


def is_bot(rt: _HasRegistry, participant_id: str) -> bool:
    """Whether a participant is a bot of this process (its tile may offer "remove")."""
    try:
        return any(b.participant.id == participant_id for b in host_for(rt.registry).bots())
    except NotFound:
        return False


class BotConsumer(CommandStreamConsumer):
    """Executes bot commands from the Redis stream in this process (a daemon thread)."""

    def __init__(self, client: redis.Redis, host: BotHost, *, node: str,
                 block_ms: int = 1000, claim_delay_s: float = CLAIM_DELAY_S) -> None:
        super().__init__(client, stream=STREAM, node=node, label="bot consumer",
                         thread_name="bot-consumer", block_ms=block_ms, batch=50)
        self.host = host
        self.claim_delay_s = claim_delay_s

    def run_round(self) -> None:
        self.poll_once()

    def poll_once(self, block_ms: int | None = None) -> int:
        if self.last_id is None:
            # Only commands sent from now on: an old "add" must not resurrect a bot.
            self.last_id = self.tail_id()
        self.redis.hset(NODES, self.node, time.time())
        return self.read(block_ms)

    def handle_command(self, entry_id: str, raw: str) -> None:
        try:
            command = json.loads(raw)
            cmd_id = str(command["cmd_id"])
            op, room = command.get("op"), command.get("room")
            name = command.get("name")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("refused bot command %r: %s", raw, exc)
            return
        if op == "add":
            if not self.host.hosts_room(str(room)):
                time.sleep(self.claim_delay_s)  # let the room's own process claim it first
            if not self.redis.set(claim_key(cmd_id), self.node, nx=True, ex=ACK_TTL_S):
                return
            try:
                size = command.get("size")
                me = self.host.add(str(room), str(name or "bot"),
                                   size=(int(size[0]), int(size[1])) if size else None,
                                   fps=float(command["fps"]) if command.get("fps") else None)
                self._ack(cmd_id, ok=True, participant_id=me.id, name=me.name)
            except (ValidationError, ValueError, TypeError, IndexError) as exc:
                self._ack(cmd_id, ok=False, error=str(exc))
        elif op == "stats":
            bots = self.host.bots(str(room))
            if bots:
                self._ack(cmd_id, ok=True, latency=relay_latency(bots), bots={
                    b.participant.name: {pub: rec.to_dict() for pub, rec in b.received.items()}
                    for b in bots})
        elif op in ("remove", "clear"):
            gone = self.host.remove_named(str(room), None if op == "clear" else str(name))
            self._ack(cmd_id, ok=True, removed=len(gone))
        else:
            self._ack(cmd_id, ok=False, error=f"unknown op {op!r}")

    def _ack(self, cmd_id: str, **data: Any) -> None:
        key = ack_key(cmd_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, self.node, json.dumps({**data, "at": time.time()}))
        pipe.expire(key, ACK_TTL_S)
        pipe.execute()


def start_bot_plane(client: redis.Redis, registry: RoomRegistry,
                    loop: asyncio.AbstractEventLoop, node: str) -> BotConsumer:
    """What an app process hosting media runs once (in `get_runtime`)."""
    host = _HOSTS.setdefault(id(registry), BotHost(registry, loop))
    consumer = BotConsumer(client, host, node=node)
    consumer.start()
    return consumer


class BotControl:
    """The sending side: ask whichever app process listens to add or remove bots."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock

    def listeners(self) -> list[str]:
        try:
            beats = self.redis.hgetall(NODES)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        now = self.clock()
        return [str(n) for n, t in beats.items() if now - float(t) <= NODE_ALIVE_S]

    def wait_listener(self, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.listeners()
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    def _send(self, op: str, room: str, name: str | None, timeout_s: float,
              **extra: Any) -> dict[str, Any]:
        cmd_id = uuid.uuid4().hex
        cmd = {"op": op, "cmd_id": cmd_id, "room": room, "name": name, **extra}
        try:
            self.redis.xadd(STREAM, {"cmd": json.dumps(cmd)}, maxlen=STREAM_MAXLEN,
                            approximate=True)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                acks = self.redis.hgetall(ack_key(cmd_id))
                if acks:
                    node, raw = next(iter(acks.items()))
                    reply: dict[str, Any] = json.loads(raw)
                    reply["node"] = node
                    return reply
                time.sleep(0.05)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis is unreachable, bot command not sent: {exc}") from exc
        raise BackendUnavailable(
            f"no app process answered the bot command {op} {room}/{name} within {timeout_s:g} s")

    def add(self, room: str, name: str, timeout_s: float = 10.0, *,
            size: tuple[int, int] | None = None, fps: float | None = None) -> dict[str, Any]:
        """Add a bot; the reply holds ok, participant_id and its (unique) name."""
        reply = self._send("add", room, name, timeout_s, size=list(size) if size else None,
                           fps=fps)
        if not reply.get("ok"):
            raise ValidationError("bot", name, str(reply.get("error")))
        return reply

    def remove(self, room: str, name: str, timeout_s: float = 5.0) -> dict[str, Any]:
        return self._send("remove", room, name, timeout_s)

    def stats(self, room: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """What the bots of `room` received: per bot, per publisher, frames, fps, frames per
        wall-clock second and stamp latency; and `latency`, the relay's added latency pooled
        over every bot-to-bot path (`relay_latency`). Only the process hosting them answers."""
        return self._send("stats", room, None, timeout_s)

    def clear(self, room: str, timeout_s: float = 5.0) -> dict[str, Any]:
        with contextlib.suppress(BackendUnavailable):
            return self._send("clear", room, None, timeout_s)
        return {"ok": False, "error": "no answer"}
