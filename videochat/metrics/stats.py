"""Per-second media metrics: aiortc `getStats()` reports turned into `MetricSample`s.

A *leg* is one server-side RTCPeerConnection: a participant's publish leg (browser → server,
the server receives) or a subscribe leg (server → browser, the server sends). The `Sampler`
reads every registered leg once a second on the media loop and hands one sample per leg to a
non-blocking sink (the `MetricsStore`).

aiortc 1.16 quirks handled here:

- inbound-rtp has no byte counters, no fps and no resolution: bitrates come from the leg's
  transport byte counters (bytes on the wire, all kinds of the bundled leg, SRTP and RTCP
  included) and frames are counted by the media code through a `FrameCounter`;
- with RTX negotiated the receiver writes one inbound-rtp entry per remote SSRC under the same
  id, so the RTX stream's entry overwrites the media one after the first retransmission. We learn
  the RTX SSRCs from the remote SDP (`ssrc-group:FID`) and, when the entry we got is not the
  media one (or its counters went backwards), we read the media stream's counters from the
  receiver, or carry the previous values and report the interval's loss as unknown;
- round-trip time exists only in remote-inbound-rtp (what the browser reports about what the
  server sent), so a publish leg has no RTT; loss for outbound comes from `fractionLost` (1/256);
- jitter is in RTP clock units: /90000 for video, /48000 for Opus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from videochat.clocks import WallClock, utcnow
from videochat.compat.aiortc import remote_streams
from videochat.exceptions import ValidationError

logger = logging.getLogger(__name__)

Direction = Literal["publish", "subscribe"]
Kind = Literal["video", "audio"]
Source = Literal["server", "browser"]
StatsDict = dict[str, dict[str, Any]]

CLOCK_RATES: dict[str, int] = {"video": 90_000, "audio": 48_000}
SAMPLE_PERIOD_S = 1.0
# A getStats that takes longer than this is abandoned for the tick: a stuck leg must not
# hold up every other leg's sample.
STATS_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class MetricSample:
    """One leg's media over the last interval (about one second)."""

    at: datetime
    room: str
    call_id: str | None
    participant: str
    leg: str
    direction: Direction
    kind: Kind
    bitrate_in_kbps: float | None = None
    bitrate_out_kbps: float | None = None
    rtt_ms: float | None = None
    loss_fraction: float | None = None
    loss_cumulative: int | None = None
    jitter_ms: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    quality: str | None = None
    # How a subscriber leg's video is delivered: "forwarded" (the publisher's own encoded
    # frames: fps, size and bitrate are those of its stream), "transcoded" (re-encoded at
    # `quality`) or "paused"; None for publish and audio legs.
    delivery: str | None = None
    # What measured it: the server's aiortc leg, or the participant's page (getStats() in the
    # browser, videochat/metrics/browser.py). The fields below exist only in browser samples.
    source: Source = "server"
    freeze_count: int | None = None  # cumulative, Chromium's inbound-rtp freezeCount
    freeze_s: float | None = None  # cumulative totalFreezesDuration
    jitter_buffer_ms: float | None = None  # over the interval: d jitterBufferDelay / d emitted
    concealed_pct: float | None = None  # audio samples concealed over the interval, percent
    decode_ms: float | None = None  # mean decode time per frame over the interval
    frames_dropped: int | None = None  # cumulative
    available_out_kbps: float | None = None  # the browser's uplink estimate (candidate pair)

    def __post_init__(self) -> None:
        if self.source not in ("server", "browser"):
            raise ValidationError("source", self.source, "must be server or browser")
        if self.at.tzinfo is None:
            raise ValidationError("sample time", self.at, "must be timezone-aware (UTC)")
        if self.direction not in ("publish", "subscribe"):
            raise ValidationError("direction", self.direction, "must be publish or subscribe")
        if self.kind not in ("video", "audio"):
            raise ValidationError("kind", self.kind, "must be video or audio")
        for name in ("room", "participant", "leg"):
            if not getattr(self, name):
                raise ValidationError(name, getattr(self, name), "must not be empty")
        if self.loss_fraction is not None and not 0.0 <= self.loss_fraction <= 1.0:
            raise ValidationError("loss_fraction", self.loss_fraction, "must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FrameCounter:
    """Frames really delivered or received on a leg; `on_frame` is called from media threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = 0
        self._total = 0
        self._width: int | None = None
        self._height: int | None = None

    def on_frame(self, width: int, height: int) -> None:
        with self._lock:
            self._frames += 1
            self._total += 1
            self._width = width
            self._height = height

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def snapshot(self) -> tuple[int, int | None, int | None]:
        """(frames since the previous snapshot, last width, last height)."""
        with self._lock:
            frames, self._frames = self._frames, 0
            return frames, self._width, self._height


class PeerConnectionLike(Protocol):
    async def getStats(self) -> Any: ...  # noqa: N802 - aiortc's name


def _plain(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return dict(stats)


def rtx_ssrcs_from_sdp(sdp: str | None) -> set[int]:
    """The RTX SSRCs announced by `a=ssrc-group:FID <media> <rtx>` lines."""
    out: set[int] = set()
    for line in (sdp or "").splitlines():
        if line.startswith("a=ssrc-group:FID"):
            parts = line.split()[1:]
            for part in parts[1:]:
                if part.isdigit():
                    out.add(int(part))
    return out


def _media_streams_of(pc: Any) -> StatsDict:
    """Inbound counters of every non-RTX remote SSRC, read from aiortc's receivers.

    aiortc keeps them in a private attribute; if a future version moves it we fall back to
    what getStats() shows (and the RTX detection in `LegStats`).
    """
    out: StatsDict = {}
    try:
        receivers = pc.getReceivers()
    except AttributeError:
        return out
    for receiver in receivers:
        streams, rtx_map = remote_streams(receiver)
        if streams is None:
            continue
        for ssrc, stream in streams.items():
            if ssrc in rtx_map:
                continue
            try:
                out[f"media-inbound_{ssrc}"] = {
                    "type": "media-inbound", "ssrc": ssrc,
                    "kind": getattr(receiver.track, "kind", None),
                    "packetsReceived": int(stream.packets_received),
                    "packetsLost": int(stream.packets_lost),
                    "jitter": int(stream.jitter),
                }
            except (AttributeError, TypeError):
                continue
    return out


async def read_stats(pc: Any) -> StatsDict:
    """getStats() as plain dicts (call on the loop that owns `pc`), plus media-only inbound."""
    report = await pc.getStats()
    out: StatsDict = {key: _plain(value) for key, value in report.items()}
    out.update(_media_streams_of(pc))
    remote = getattr(pc, "remoteDescription", None)
    rtx = rtx_ssrcs_from_sdp(getattr(remote, "sdp", None))
    if rtx:
        out["_rtx"] = {"type": "_rtx", "ssrcs": sorted(rtx)}
    return out


@dataclass
class _InboundState:
    ssrc: int | None = None
    received: int = 0
    lost: int = 0


class LegStats:
    """Turns successive stats reports of one leg into `MetricSample`s (pure; no I/O)."""

    def __init__(self, *, leg: str, tags: Mapping[str, Any]) -> None:
        self.leg = leg
        self.tags = dict(tags)
        self._prev: StatsDict | None = None
        self._prev_t: float | None = None
        self._inbound: dict[str, _InboundState] = {}
        self._last_jitter_ms: float | None = None
        self.rtx_overwrites = 0  # how often the RTX entry hid the media one (for tests/logs)

    def update(
        self,
        report: StatsDict,
        t: float,
        at: datetime,
        *,
        frames: tuple[int, int | None, int | None] = (0, None, None),
        quality: str | None = None,
        delivery: str | None = None,
    ) -> MetricSample | None:
        """Feed one report taken at monotonic time `t`; None for the very first one."""
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t = report, t
        inbound = self._pick_inbound(report)
        if prev is None or prev_t is None or t <= prev_t:
            return None
        dt = t - prev_t
        kind = self._kind(report)
        rx, tx = _transport_bytes(report), _transport_bytes(prev)
        bitrate_in = _rate(rx[0], tx[0], dt)
        bitrate_out = _rate(rx[1], tx[1], dt)
        loss_fraction: float | None = None
        loss_cumulative: int | None = None
        jitter_ms: float | None = None
        rtt_ms: float | None = None
        if inbound is not None:
            loss_fraction, loss_cumulative, jitter_ms = inbound
        remote = _first(report, "remote-inbound-rtp", kind)
        if remote is not None:
            if remote.get("roundTripTime") is not None:
                rtt_ms = float(remote["roundTripTime"]) * 1000.0
            if inbound is None:
                loss_fraction = min(1.0, max(0.0, float(remote.get("fractionLost") or 0) / 256.0))
                loss_cumulative = max(0, int(remote.get("packetsLost") or 0))
                jitter_ms = _jitter_ms(remote.get("jitter"), kind)
        n_frames, width, height = frames
        fps = n_frames / dt if kind == "video" else None
        direction = self.tags.get("direction", "publish" if inbound is not None else "subscribe")
        return MetricSample(
            at=at, room=str(self.tags["room"]), call_id=self.tags.get("call_id"),
            participant=str(self.tags["participant"]), leg=self.leg, direction=direction,
            kind=kind, bitrate_in_kbps=bitrate_in, bitrate_out_kbps=bitrate_out, rtt_ms=rtt_ms,
            loss_fraction=loss_fraction, loss_cumulative=loss_cumulative, jitter_ms=jitter_ms,
            fps=fps, width=width if kind == "video" else None,
            height=height if kind == "video" else None, quality=quality,
            delivery=delivery if kind == "video" else None,
        )

    @staticmethod
    def _kind(report: StatsDict) -> Kind:
        kinds = {v.get("kind") for v in report.values() if v.get("type") in (
            "inbound-rtp", "outbound-rtp", "media-inbound")}
        return "video" if "video" in kinds or not kinds else "audio"

    def _pick_inbound(
        self, report: StatsDict
    ) -> tuple[float | None, int, float | None] | None:
        """(interval loss, cumulative lost, jitter ms) of the leg's main inbound media stream."""
        kind = self._kind(report)
        rtx = set(report.get("_rtx", {}).get("ssrcs", []))
        media = [v for v in report.values()
                 if v.get("type") == "media-inbound" and v.get("kind") in (kind, None)]
        entries = [v for v in report.values()
                   if v.get("type") == "inbound-rtp" and v.get("kind") == kind]
        if not media and not entries:
            return None
        key = f"inbound-{kind}"
        state = self._inbound.setdefault(key, _InboundState())
        chosen: dict[str, Any] | None = None
        if media:
            chosen = max(media, key=lambda v: int(v.get("packetsReceived") or 0))
        else:
            entry = entries[0]
            ssrc = entry.get("ssrc")
            received = int(entry.get("packetsReceived") or 0)
            is_rtx = ssrc in rtx or (
                state.ssrc is not None and ssrc != state.ssrc and received < state.received)
            if is_rtx:
                self.rtx_overwrites += 1
            else:
                chosen = entry
        if chosen is None:
            # The media counters are hidden this interval: keep the last known ones, and say
            # we do not know this interval's loss rather than report a made-up 0.
            return None, state.lost, self._last_jitter_ms
        received = int(chosen.get("packetsReceived") or 0)
        lost = max(0, int(chosen.get("packetsLost") or 0))
        same_stream = state.ssrc == chosen.get("ssrc")
        d_recv = received - state.received if same_stream else received
        d_lost = lost - state.lost if same_stream else lost
        state.ssrc, state.received, state.lost = chosen.get("ssrc"), received, lost
        fraction: float | None
        if d_recv < 0:
            fraction = None  # counters went backwards: a new stream behind the same id
        elif d_recv + max(d_lost, 0) == 0:
            fraction = 0.0
        else:
            fraction = max(0, d_lost) / (d_recv + max(0, d_lost))
        self._last_jitter_ms = _jitter_ms(chosen.get("jitter"), kind)
        return fraction, lost, self._last_jitter_ms


def _first(report: StatsDict, type_: str, kind: str) -> dict[str, Any] | None:
    for value in report.values():
        if value.get("type") == type_ and value.get("kind") == kind:
            return value
    return None


def _transport_bytes(report: StatsDict) -> tuple[int | None, int | None]:
    received = sent = None
    for value in report.values():
        if value.get("type") == "transport":
            received = (received or 0) + int(value.get("bytesReceived") or 0)
            sent = (sent or 0) + int(value.get("bytesSent") or 0)
    return received, sent


def _rate(now: int | None, before: int | None, dt: float) -> float | None:
    if now is None or before is None or now < before:
        return None
    return (now - before) * 8 / dt / 1000.0


def _jitter_ms(value: Any, kind: str) -> float | None:
    if value is None:
        return None
    return float(value) * 1000.0 / CLOCK_RATES.get(kind, 90_000)


@dataclass
class _Leg:
    pc: Any
    tags: dict[str, Any]
    counter: FrameCounter
    quality: Callable[[], str | None]
    stats: LegStats
    delivery: Callable[[], str | None] | None = None


class Sampler:
    """Samples every registered leg once a second on the media loop.

    All of aiortc lives on one asyncio loop, so getStats runs there; everything done per tick
    is a few dict operations plus a call to the sink, which must not block (the metrics
    store only appends to a buffer).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        sink: Callable[[MetricSample], None],
        *,
        clock: WallClock = utcnow,
        period_s: float = SAMPLE_PERIOD_S,
    ) -> None:
        self._loop = loop
        self._sinks = [sink]
        self._clock = clock
        self._period = period_s
        self._legs: dict[str, _Leg] = {}
        self._counters: dict[str, FrameCounter] = {}
        self._latest: dict[str, MetricSample] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.errors = 0
        self.max_tick_s = 0.0  # the longest a tick kept the loop busy, for the stall check
        self._last_at: datetime | None = None

    def add_leg(
        self,
        leg_id: str,
        pc: Any,
        tags: dict[str, Any],
        counter: FrameCounter,
        quality: Callable[[], str | None],
        delivery: Callable[[], str | None] | None = None,
    ) -> None:
        for key in ("room", "participant", "direction"):
            if not tags.get(key):
                raise ValidationError("leg tags", tags, f"need a non-empty {key!r}")
        with self._lock:
            self._legs[leg_id] = _Leg(pc, dict(tags), counter, quality,
                                      LegStats(leg=leg_id, tags=tags), delivery)

    def remove_leg(self, leg_id: str) -> None:
        with self._lock:
            self._legs.pop(leg_id, None)
            self._latest.pop(leg_id, None)
            self._counters.pop(leg_id, None)

    def add_sink(self, sink: Callable[[MetricSample], None]) -> None:
        """Also hand every sample to `sink`, after the ones already there."""
        self._sinks.append(sink)

    def counter(self, leg_id: str) -> FrameCounter:
        """The leg's frame counter (created on first use) for the media code to feed."""
        with self._lock:
            return self._counters.setdefault(leg_id, FrameCounter())

    def leg_listener(
        self, quality_of: Callable[[str], str | None] | None = None,
        delivery_of: Callable[[str], str | None] | None = None,
    ) -> Callable[[Any, bool], None]:
        """A `LegRegistry` listener: samples every leg from registration to removal.

        The leg object needs leg_id, pc, loop, room, call_id, participant and direction; the
        sampler starts on the first leg's loop if it was built without one.
        """
        def listener(leg: Any, added: bool) -> None:
            if not added:
                self.remove_leg(leg.leg_id)
                return
            if self._loop is None:
                self._loop = leg.loop
            tags = {"room": leg.room, "call_id": leg.call_id, "participant": leg.participant,
                    "direction": leg.direction}
            leg_id = str(leg.leg_id)

            def quality() -> str | None:
                return quality_of(leg_id) if quality_of is not None else None

            def delivery() -> str | None:
                return delivery_of(leg_id) if delivery_of is not None else None

            self.add_leg(leg_id, leg.pc, tags, self.counter(leg_id), quality, delivery)
            self.start()

        return listener

    def legs(self) -> list[str]:
        with self._lock:
            return list(self._legs)

    def latest(self, room: str) -> dict[str, MetricSample]:
        """The newest sample of each leg of `room`, for the live badges."""
        with self._lock:
            return {k: v for k, v in self._latest.items() if v.room == room}

    def start(self) -> None:
        """Start ticking (idempotent); callable from any thread."""
        loop = self._loop
        if loop is None:
            return  # started by the first leg that brings its loop

        def create() -> None:
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(), name="metrics-sampler")

        if _running_loop() is loop:
            create()
        else:
            loop.call_soon_threadsafe(create)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking; from the loop's own thread this only requests the cancel."""
        def cancel() -> None:
            if self._task is not None:
                self._task.cancel()

        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            cancel()
            return
        done = concurrent.futures.Future[None]()

        def cancel_and_signal() -> None:
            cancel()
            done.set_result(None)

        loop.call_soon_threadsafe(cancel_and_signal)
        try:
            done.result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("sampler stop: loop did not answer in %.1f s", timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            await self.tick()
            next_t += self._period
            now = loop.time()
            if next_t < now:
                # The loop was stalled past a whole period: skip the lost ticks rather than
                # fire a burst (the next sample covers the longer interval).
                next_t = now + self._period - ((now - next_t) % self._period)
            await asyncio.sleep(next_t - now)

    async def tick(self) -> list[MetricSample]:
        """Sample every leg once (also used directly by tests)."""
        with self._lock:
            legs = list(self._legs.items())
        reports = await asyncio.gather(
            *(asyncio.wait_for(read_stats(leg.pc), STATS_TIMEOUT_S) for _, leg in legs),
            return_exceptions=True,
        )
        busy_from = time.perf_counter()
        t = asyncio.get_running_loop().time()
        at = self._clock().replace(microsecond=0)
        if self._last_at is not None and at <= self._last_at:
            # A late tick followed by a punctual one can land in the same second; the store
            # keeps one sample per leg per second, so move this one to the next free slot.
            at = self._last_at + timedelta(seconds=1)
        self._last_at = at
        out = []
        for (leg_id, leg), report in zip(legs, reports, strict=True):
            if isinstance(report, BaseException):
                if isinstance(report, asyncio.CancelledError):
                    raise report
                self.errors += 1
                logger.debug("getStats failed for leg %s: %r", leg_id, report)
                continue
            try:
                quality = leg.quality()
                delivery = leg.delivery() if leg.delivery is not None else None
            except Exception:  # noqa: BLE001 - a broken quality callback must not stop sampling
                logger.exception("quality callback failed for leg %s", leg_id)
                quality = delivery = None
            sample = leg.stats.update(report, t, at, frames=leg.counter.snapshot(),
                                      quality=quality, delivery=delivery)
            if sample is None:
                continue
            with self._lock:
                if leg_id not in self._legs:
                    continue  # removed while we awaited its stats
                self._latest[leg_id] = sample
            for sink in self._sinks:
                try:
                    sink(sample)
                except Exception:  # noqa: BLE001 - storage problems must not reach the media loop
                    self.errors += 1
                    logger.exception("metrics sink failed")
            out.append(sample)
        self.ticks += 1
        self.max_tick_s = max(self.max_tick_s, time.perf_counter() - busy_from)
        return out


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = [
    "FrameCounter", "LegStats", "MetricSample", "Sampler", "read_stats", "rtx_ssrcs_from_sdp",
]
