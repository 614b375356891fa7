"""Fault injection on real packets, at aiortc's and aioice's transport seams.

Two seams per media leg (one server-side RTCPeerConnection):

* ``RTCIceTransport._send`` / ``_recv`` carry DTLS, SRTP and SRTCP but not STUN. Loss, latency
  with jitter and a bandwidth cap act there, so ICE consent keeps succeeding and the call stays
  up, degraded, exactly as on a bad network.
* aioice ``StunProtocol.datagram_received`` / ``send_data`` / ``send_stun`` see every datagram,
  STUN included. A blackout drops there too, so consent checks fail and the connection really
  drops.

Direction is the participant's point of view: ``up`` acts on packets the server receives on their
legs, ``down`` on packets the server sends. The shims are installed once per ICE transport and
read the leg's current `LinkPolicy` per packet, so changing faults never re-patches anything and
legs registered while a fault lasts get it at once.

Everything that touches a peer connection runs on the loop that owns the peer connections; the
public methods of `FaultManager` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from videochat.clocks import EpochClock
from videochat.compat.aioice import connection_protocols
from videochat.compat.aiortc import ice_connection, ice_io, is_ice_transport, set_ice_io
from videochat.events import CallEvent, EventSink
from videochat.faults.kinds import BACKEND_KINDS, NETWORK_KINDS
from videochat.faults.model import BandwidthFault, Fault, LatencyFault, LossFault, VideoEffect

if TYPE_CHECKING:
    import av
    from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)

# Like tbf's "limit": beyond this much queued airtime the cap drops instead of queueing, so a
# capped link adds bounded delay and real loss rather than growing latency without end.
MAX_QUEUE_S = 0.4



class InjectableLeg(Protocol):
    """What the injector needs of a media leg (`videochat.media.legs.MediaLeg` has it)."""

    room: str
    participant: str  # display name
    participant_id: str
    direction: Literal["publish", "subscribe"]
    pc: RTCPeerConnection

    def close(self) -> None: ...


@dataclass(frozen=True)
class LinkPolicy:
    """What one direction of one leg currently suffers; the sum of its matching faults."""

    loss: float = 0.0  # probability 0..1
    latency_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None
    blackout: bool = False

    @property
    def idle(self) -> bool:
        return (not self.blackout and self.loss == 0 and self.latency_s == 0
                and self.jitter_s == 0 and self.rate_bps is None)

    @classmethod
    def combine(cls, faults: Iterable[Fault]) -> LinkPolicy:
        keep = 1.0
        latency = jitter = 0.0
        rate: float | None = None
        blackout = False
        for f in faults:
            if isinstance(f, LossFault):
                keep *= 1 - f.percent / 100
            elif isinstance(f, LatencyFault):
                latency += f.ms / 1000
                jitter += f.jitter_ms / 1000
            elif isinstance(f, BandwidthFault):
                bps = f.kbps * 1000
                rate = bps if rate is None else min(rate, bps)
            elif f.kind == "blackout":
                blackout = True
        return cls(loss=1 - keep, latency_s=latency, jitter_s=jitter, rate_bps=rate,
                   blackout=blackout)


IDLE = LinkPolicy()


@dataclass
class LinkCounters:
    packets: int = 0
    dropped: int = 0
    delayed: int = 0
    bytes_passed: int = 0


class Shaper:
    """Decides, per packet, drop or how long to hold it: loss, then rate queue, then delay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random) -> None:
        self.policy: LinkPolicy = IDLE
        self.counters = LinkCounters()
        self._loop = loop
        self._rng = rng
        self._link_free_at = 0.0
        self._last_due = 0.0

    def decide(self, size: int) -> float | None:
        """None: drop. Otherwise the delay in seconds before the packet goes on."""
        p = self.policy
        c = self.counters
        c.packets += 1
        if p.idle:
            c.bytes_passed += size
            return 0.0
        if p.blackout or (p.loss > 0 and self._rng.random() < p.loss):
            c.dropped += 1
            return None
        now = self._loop.time()
        due = now
        if p.rate_bps is not None:
            start = max(now, self._link_free_at)
            if start - now > MAX_QUEUE_S:
                c.dropped += 1
                return None
            self._link_free_at = start + size * 8 / p.rate_bps
            due = self._link_free_at
        if p.latency_s or p.jitter_s:
            due += max(0.0, p.latency_s + self._rng.uniform(-p.jitter_s, p.jitter_s))
        # Jitter must not reorder: real paths rarely do, and reordering would only trigger NACKs.
        due = max(due, self._last_due)
        self._last_due = due
        c.bytes_passed += size
        if due > now:
            c.delayed += 1
        return due - now


class TransportShim:
    """Wraps one RTCIceTransport's `_send`/`_recv` and its aioice protocols."""

    def __init__(self, ice: Any, loop: asyncio.AbstractEventLoop, rng: random.Random) -> None:
        self.ice = ice
        self.loop = loop
        self.up = Shaper(loop, rng)  # received by the server
        self.down = Shaper(loop, rng)  # sent by the server
        self._orig_send, self._orig_recv = ice_io(ice)
        self._inbox: asyncio.Queue[bytes | None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stun_patched: set[int] = set()
        set_ice_io(ice, self._send, self._recv)
        self.patch_protocols()

    def set_policies(self, up: LinkPolicy, down: LinkPolicy) -> None:
        self.up.policy = up
        self.down.policy = down
        if up.blackout or down.blackout:
            self.patch_protocols()  # candidates gathered after registration

    # --- DTLS/SRTP seam -------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        delay = self.down.decide(len(data))
        if delay is None:
            return
        if delay <= 0:
            await self._orig_send(data)
            return
        self.loop.call_later(delay, self._send_later, data)

    def _send_later(self, data: bytes) -> None:
        self.loop.create_task(self._send_quietly(data))

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self._orig_send(data)
        except ConnectionError:
            pass  # the connection closed while the packet was held back

    async def _recv(self) -> bytes:
        while True:
            if self._inbox is not None:
                data = await self._inbox.get()
                if data is None:
                    self._inbox.put_nowait(None)  # every later reader must see the end too
                    raise ConnectionError("Connection lost while receiving data")
                return data
            data = await self._orig_recv()
            delay = self.up.decide(len(data))
            if delay is None:
                continue
            if delay <= 0:
                return data
            # Holding packets back needs a reader that keeps draining the socket meanwhile;
            # from now on this transport reads through the pump.
            inbox = self._start_pump()
            self.loop.call_later(delay, inbox.put_nowait, data)

    def _start_pump(self) -> asyncio.Queue[bytes | None]:
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            self._pump = self.loop.create_task(self._run_pump(self._inbox))
        return self._inbox

    async def _run_pump(self, inbox: asyncio.Queue[bytes | None]) -> None:
        try:
            while True:
                data = await self._orig_recv()
                delay = self.up.decide(len(data))
                if delay is None:
                    continue
                if delay <= 0:
                    inbox.put_nowait(data)
                else:
                    self.loop.call_later(delay, inbox.put_nowait, data)
        except ConnectionError:
            inbox.put_nowait(None)

    # --- STUN seam (blackout only) --------------------------------------------------------

    def patch_protocols(self) -> None:
        for protocol in connection_protocols(ice_connection(self.ice)):
            if id(protocol) in self._stun_patched:
                continue
            self._stun_patched.add(id(protocol))
            self._patch_protocol(protocol)

    def _patch_protocol(self, protocol: Any) -> None:
        orig_received = protocol.datagram_received
        orig_send_data = protocol.send_data
        orig_send_stun = protocol.send_stun
        up, down = self.up, self.down

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            if up.policy.blackout:
                return
            orig_received(data, addr)

        async def send_data(data: bytes, addr: tuple[str, int]) -> None:
            if down.policy.blackout:
                return
            await orig_send_data(data, addr)

        def send_stun(message: Any, addr: tuple[str, int]) -> None:
            if down.policy.blackout:
                return
            orig_send_stun(message, addr)

        protocol.datagram_received = datagram_received
        protocol.send_data = send_data
        protocol.send_stun = send_stun


def ice_transports(pc: RTCPeerConnection) -> list[Any]:
    """Every distinct RTCIceTransport a peer connection uses right now."""
    seen: dict[int, Any] = {}
    dtls_list: list[Any] = []
    for t in pc.getTransceivers():
        dtls_list += [t.sender.transport, t.receiver.transport]
    if pc.sctp is not None:
        dtls_list.append(pc.sctp.transport)
    for dtls in dtls_list:
        ice = getattr(dtls, "transport", None)
        if is_ice_transport(ice):
            seen[id(ice)] = ice
    return list(seen.values())


@dataclass(frozen=True)
class ActiveFault:
    fault: Fault
    since: float  # wall clock, seconds since the epoch
    until: float

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def to_dict(self) -> dict[str, Any]:
        return {"fault": self.fault.model_dump(mode="json"), "since": self.since,
                "until": self.until}


@dataclass
class _Leg:
    leg: InjectableLeg
    shims: dict[int, TransportShim] = field(default_factory=dict)
    up: LinkPolicy = IDLE
    down: LinkPolicy = IDLE


class FaultManager:
    """Applies faults to this process's media legs; one per process.

    `apply` starts a fault (its end is scheduled on the loop with the clock); `register_leg`
    gives a new leg every active fault that matches it. `video_effect` is what relay tracks ask
    per frame. Events (`fault_started`, `fault_ended`) go to `events` when `report` is true, so
    with several processes only one reports each fault.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        events: EventSink | None = None,
        clock: EpochClock = time.time,
        *,
        node: str = "local",
        seed: int | None = None,
    ) -> None:
        self.loop = loop
        self.events = events
        self.clock = clock
        self.node = node
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._legs: dict[int, _Leg] = {}
        self._active: dict[str, ActiveFault] = {}
        self._reporting: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._video: tuple[Fault, ...] = ()
        self._unregister: dict[int, Callable[[], None]] = {}

    # --- public, any thread ---------------------------------------------------------------

    def register_leg(self, leg: InjectableLeg) -> Callable[[], None]:
        entry = _Leg(leg)
        with self._lock:
            self._legs[id(leg)] = entry
        self._on_loop(lambda: self._attach(entry))

        def unregister() -> None:
            with self._lock:
                self._legs.pop(id(leg), None)

            def release() -> None:
                # A leg we no longer follow must not keep a fault we can no longer end.
                for shim in entry.shims.values():
                    shim.set_policies(IDLE, IDLE)

            self._on_loop(release)

        return unregister

    def leg_listener(self, leg: InjectableLeg, added: bool) -> None:
        """Shaped for `videochat.media.legs.LegRegistry.add_listener`: follows legs coming
        and going."""
        if added:
            self._unregister[id(leg)] = self.register_leg(leg)
        else:
            undo = self._unregister.pop(id(leg), None)
            if undo is not None:
                undo()

    def legs_matching(self, fault: Fault) -> int:
        """How many of this process's legs `fault` covers (0 for backend outages)."""
        if fault.kind in BACKEND_KINDS:
            return 0
        return len(self._legs_for(fault))

    def apply(self, fault: Fault, *, since: float | None = None, until: float | None = None,
              report: bool = True) -> ActiveFault:
        """Start `fault` (idempotent per fault id). Returns its active record."""
        now = self.clock()
        since = now if since is None else since
        until = since + fault.duration_s if until is None else until
        record = ActiveFault(fault, since, until)
        with self._lock:
            if fault.id in self._active:
                return self._active[fault.id]
            if until <= now:
                return record
            self._active[fault.id] = record
            if report:
                self._reporting.add(fault.id)
            self._video = tuple(a.fault for a in self._active.values()
                                if a.fault.kind in ("freeze_video", "black_video"))
        self._on_loop(lambda: self._started(record))
        return record

    def stop(self, fault_id: str, reason: str = "stopped") -> bool:
        with self._lock:
            record = self._active.pop(fault_id, None)
            self._video = tuple(f for f in self._video if f.id != fault_id)
        if record is None:
            return False
        self._on_loop(lambda: self._ended(record, reason))
        return True

    def clear(self, room: str | None = None) -> list[ActiveFault]:
        """Stop every fault, or those aimed at `room`. Returns what was stopped."""
        with self._lock:
            ids = [fid for fid, a in self._active.items() if room is None or a.fault.room == room]
        out = []
        for fid in ids:
            with self._lock:
                record = self._active.get(fid)
            if record is not None and self.stop(fid, "cleared"):
                out.append(record)
        return out

    def active(self) -> list[ActiveFault]:
        with self._lock:
            return sorted(self._active.values(), key=lambda a: a.since)

    def video_effect(self, room: str, participant: str | None) -> VideoEffect | None:
        """What the relay must do to this participant's video right now: freeze, black, or not."""
        effect: VideoEffect | None = None
        for f in self._video:
            if f.matches(room, participant):
                if f.kind == "black_video":
                    return "black"
                effect = "freeze"
        return effect

    def expire_due(self) -> list[ActiveFault]:
        """End every fault whose time is up (the loop timers call this; tests may too)."""
        now = self.clock()
        with self._lock:
            due = [a for a in self._active.values() if a.until <= now]
        for record in due:
            self.stop(record.fault.id, "expired")
        return due

    def counters(self, room: str, participant: str) -> dict[str, LinkCounters]:
        """Packets seen/dropped/delayed per direction, summed over the participant's legs."""
        out = {"up": LinkCounters(), "down": LinkCounters()}
        with self._lock:
            entries = [e for e in self._legs.values()
                       if e.leg.room == room and e.leg.participant == participant]
        for e in entries:
            for shim in e.shims.values():
                for name, shaper in (("up", shim.up), ("down", shim.down)):
                    total = out[name]
                    total.packets += shaper.counters.packets
                    total.dropped += shaper.counters.dropped
                    total.delayed += shaper.counters.delayed
                    total.bytes_passed += shaper.counters.bytes_passed
        return out

    # --- loop side ------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

    def _attach(self, entry: _Leg) -> None:
        pc = entry.leg.pc
        self._refresh_shims(entry)

        def on_state() -> None:
            # Transports are replaced when BUNDLE is negotiated: pick up the survivors.
            self._refresh_shims(entry)

        try:
            pc.on("connectionstatechange", on_state)
        except AttributeError:
            pass
        self._update_leg(entry)

    def _refresh_shims(self, entry: _Leg) -> None:
        for ice in ice_transports(entry.leg.pc):
            if id(ice) in entry.shims:
                continue
            shim = getattr(ice, "_vc_shim", None)
            if shim is None:
                shim = TransportShim(ice, self.loop, self._rng)
                ice._vc_shim = shim
            entry.shims[id(ice)] = shim
            shim.set_policies(entry.up, entry.down)

    @staticmethod
    def _matches(fault: Fault, leg: InjectableLeg) -> bool:
        return fault.matches(leg.room, leg.participant)

    def _update_leg(self, entry: _Leg) -> None:
        faults = [a.fault for a in self.active()
                  if a.fault.kind in NETWORK_KINDS and self._matches(a.fault, entry.leg)]
        entry.up = LinkPolicy.combine(f for f in faults if getattr(f, "direction", "both")
                                      in ("up", "both"))
        entry.down = LinkPolicy.combine(f for f in faults if getattr(f, "direction", "both")
                                        in ("down", "both"))
        for shim in entry.shims.values():
            shim.set_policies(entry.up, entry.down)

    def _legs_for(self, fault: Fault) -> list[_Leg]:
        with self._lock:
            return [e for e in self._legs.values() if self._matches(fault, e.leg)]

    def _started(self, record: ActiveFault) -> None:
        fault = record.fault
        legs = self._legs_for(fault)
        if fault.kind in NETWORK_KINDS:
            for entry in legs:
                self._update_leg(entry)
        elif fault.kind == "kill":
            for entry in legs:
                self._kill(entry)
        self._arm(fault.id, record.until)
        logger.info("fault started on %s: %s (%d legs here)", self.node, fault.describe(),
                    len(legs))
        self._emit("fault_started", record, legs=len(legs))

    def _arm(self, fault_id: str, until: float) -> None:
        self._timers[fault_id] = self.loop.call_later(
            max(0.0, until - self.clock()), self._expire_timer, fault_id, until)

    def _expire_timer(self, fault_id: str, until: float) -> None:
        # uvloop's timers run on a millisecond clock cached per loop iteration, so one can
        # fire a hair before `until` by our clock: re-arm rather than leave the fault running.
        if self.clock() < until:
            with self._lock:
                active = fault_id in self._active
            if active:
                self._arm(fault_id, until)
            return
        self.expire_due()

    def _ended(self, record: ActiveFault, reason: str) -> None:
        fault = record.fault
        timer = self._timers.pop(fault.id, None)
        if timer is not None:
            timer.cancel()
        if fault.kind in NETWORK_KINDS:
            for entry in self._legs_for(fault):
                self._update_leg(entry)
        logger.info("fault ended (%s) on %s: %s", reason, self.node, fault.describe())
        self._emit("fault_ended", record, reason=reason)
        self._reporting.discard(fault.id)

    def _kill(self, entry: _Leg) -> None:
        leg = entry.leg
        logger.warning("killing %s leg of %s in %s", leg.direction, leg.participant, leg.room)
        try:
            leg.close()
        except Exception:  # noqa: BLE001 - a failing close must not spare the peer connection
            logger.exception("leg.close() failed; closing the peer connection directly")
        self.loop.create_task(leg.pc.close())

    def _emit(self, kind: str, record: ActiveFault, **extra: Any) -> None:
        fault = record.fault
        if self.events is None or fault.id not in self._reporting:
            return
        data = {"fault_id": fault.id, "fault_kind": fault.kind, "params": fault.params(),
                "direction": getattr(fault, "direction", None), "preset": fault.preset,
                "since": record.since, "until": record.until, "node": self.node, **extra}
        self.events.emit(CallEvent(
            kind=kind, room=fault.room, participant=fault.participant,
            at=datetime.fromtimestamp(self.clock(), UTC), data=data,
        ))


def is_backend(fault: Fault) -> bool:
    return fault.kind in BACKEND_KINDS


# --- video effects -----------------------------------------------------------------------

class VideoEffectFilter:
    """Per relayed video track: turns frames black or freezes them while a fault says so.

    The relay calls `apply(frame)` for each frame it forwards from `participant`; the returned
    frame keeps the original timing so the encoder and the receiver see a steady stream. It fits
    `relay.RelayTrack.transform` as is; set `participant` again when the track is re-bound to
    another publisher.
    """

    def __init__(self, manager: FaultManager, room: str, participant: str) -> None:
        self.manager = manager
        self.room = room
        self.participant = participant
        self._last: av.VideoFrame | None = None
        self._frozen: Any = None  # yuv420p planes of the frame held while frozen
        self._black: Any = None

    def active(self) -> bool:
        """A fault changes this participant's video now: it needs decoded frames."""
        return self.manager.video_effect(self.room, self.participant) is not None

    def apply(self, frame: av.VideoFrame) -> av.VideoFrame:
        effect = self.manager.video_effect(self.room, self.participant)
        if effect is None:
            self._last = frame
            self._frozen = None
            return frame
        # Imported here: the command line imports this module and needs neither.
        import av
        import numpy as np

        if effect == "black":
            key = (frame.width, frame.height)
            if self._black is None or self._black[0] != key:
                h, w = frame.height - frame.height % 2, frame.width - frame.width % 2
                img = np.full((h * 3 // 2, w), 128, dtype=np.uint8)
                img[:h] = 16  # studio-range black luma, neutral chroma
                self._black = (key, img)
            out = av.VideoFrame.from_ndarray(self._black[1], format="yuv420p")
        else:
            if self._frozen is None:
                source = self._last if self._last is not None else frame
                self._frozen = source.reformat(format="yuv420p").to_ndarray()
            out = av.VideoFrame.from_ndarray(self._frozen, format="yuv420p")
        out.pts = frame.pts
        out.time_base = frame.time_base
        return out
