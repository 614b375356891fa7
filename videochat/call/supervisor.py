"""Keeps every call of this process healthy: watches media, rebuilds dropped legs, adapts quality.

Runs on the media loop (all of aiortc lives there), fed by:
- frames arriving in each participant's video hub (the publish leg is alive),
- peer-connection state changes of every leg (a killed or failed leg),
- receiver reports of subscriber legs as they arrive (loss -> quality ladder; videochat.call.rtcp),
  and the stats sampler's per-second samples (RTT; loss until reports arrive).

Design (why):
- A participant is supervised as a whole, by its publish leg: when its camera's frames stop for
  2.5 s, or any of its legs closes or fails, its network is what broke, so every leg of that
  participant is rebuilt together. Rebuilding means new component keys for that session
  (`rebuild` callback, UI side): a new RTCPeerConnection per leg, because aiortc has no ICE
  restart. Others' subscriber legs stay up: they are bound to hubs, which resume as soon as
  the rebuilt publish leg delivers frames.
- Supervision starts at a leg's first frame, so a receive-only participant (no camera) is
  never "dropped" in a loop.
- The quality ladder acts per subscriber leg on the server: frames are scaled and decimated
  before encoding for that one receiver (aiortc has no per-sender bitrate API), and at
  audio-only video is paused and the tile says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from videochat.call.quality import (
    AUDIO_KBPS,
    AUDIO_RESERVE_KBPS,
    VIDEO_FLOOR_KBPS,
    ConnectionQuality,
    FrameDecimator,
    QualityLevel,
    QualityPolicy,
    frame_size_for,
    start_level,
    video_bitrate_kbps,
)
from videochat.call.recovery import Action, EventContext, LegSupervisor, ReconnectState
from videochat.call.rtcp import watch_receiver_reports
from videochat.compat.aiortc import (
    RetransmitThrottle,
    on_keyframe_request,
    throttle_retransmissions,
)
from videochat.compat.encoders import RungVp8Encoder, install_leg_encoders
from videochat.events import CallEvent
from videochat.faults.injector import FaultManager, VideoEffectFilter
from videochat.media.legs import LegRegistry, MediaLeg
from videochat.media.participant import Participant, Slot
from videochat.media.relay import Delivery, is_video
from videochat.media.room import RoomRegistry
from videochat.metrics.stats import FrameCounter, MetricSample

logger = logging.getLogger(__name__)

TICK_S = 0.25
STALL_S = 1.0  # a tick this late means the loop was blocked, not that media stopped
ATTEMPT_TIMEOUT_S = 30.0  # about how long ICE keeps checking before it declares failure
OUTAGE_ATTEMPT_TIMEOUT_S = 4.0  # ...but after "media stopped", replace a rebuild before its
# unanswered checks pass Chromium's ~5 s (it then pings seconds apart: see recovery.py)
AUDIO_REPORT_FRESH_S = 12.0  # browsers report on audio every ~5 s
FPS_TOLERANCE = 0.85  # a 30 fps rung forwards a camera measured at up to ~35 fps
ESTIMATE_FRESH_S = 5.0  # Chrome sends a REMB with most video reports (~1 s): older is stale
START_KBPS = 300  # before the receiver's first estimate, as WebRTC's senders start
LADDER_READS_ESTIMATE = False
"""Whether the ladder acts on the receiver's REMB (jumps to the rung whose floor fits it,
headroom for up-steps), or only on loss and delay growth. Off: until the REMB reached the
views (it never did before the double hook was fixed), the ladder ran on loss and delay
alone, and switched on it made things worse with Chromium (bench/bandwidth.py, thin-200k):
Chromium's REMB at a call's start read 145-197 kbps, so a healthy call sat at 240p15; under
a 200 kbps cap it fell to 27-82 kbps and paused video, and with only audio flowing it never
again proved the 62 kbps that 180p10 needs, so video stayed paused after the cap was gone.
The estimate still decides forwarding (`affords_forwarding`), the resend budget and, through
aiortc, each leg's encoder bitrate."""
RESEND_SHARE = 0.25  # of the receiver's estimate, at most, for resending NACKed packets
RESEND_FLOOR_KBPS = 48.0  # ...but repairs of random loss at a low estimate still get through
RESEND_MIN_GAP_S = 0.1  # a packet is resent at most once per RTT, and never sooner than this
FORWARD_HEADROOM = 1.25  # as the ladder's up-steps: the stream must fit with room, or it
# congests the path at once
Emit = Callable[[CallEvent], None]
Rebuild = Callable[[Participant], None]


class SubscriberView:
    """What one subscriber slot does to each video frame before it is encoded for them."""

    def __init__(self, slot: Slot, room: str, publisher: str, *, emit: Emit | None,
                 faults: FaultManager | None, clock: Callable[[], float],
                 context: EventContext,
                 ladder_reads_estimate: bool = LADDER_READS_ESTIMATE) -> None:
        self.slot = slot
        self.clock = clock
        self.ladder_reads_estimate = ladder_reads_estimate
        self.policy = QualityPolicy(clock, start=start_level(), emit=emit, context=context,
                                    same_stream=self.same_stream)
        self.decimator = FrameDecimator(self.policy.level)
        self.effect = VideoEffectFilter(faults, room, publisher) if faults is not None else None
        self._rtt_ms: float | None = None
        self._reported: dict[str, float] = {}  # kind -> when its last receiver report came
        # (when, loss, span) of the last audio report
        self._audio_loss: tuple[float, float, float | None] | None = None
        self._rtt_from_reports = False
        self._estimate: tuple[float, float] | None = None  # (when, REMB kbps)
        self.encoder: RungVp8Encoder | None = None

    def attach_encoder(self, encoder: RungVp8Encoder | None) -> None:
        """The leg's video encoder, told the rung's bitrate from now on."""
        self.encoder = encoder
        self._set_cap()

    def _set_cap(self) -> None:
        if self.encoder is not None and self.policy.level.video:
            self.encoder.cap_bps = self.policy.level.target_kbps * 1000

    @property
    def estimate_kbps(self) -> float | None:
        """The receiver's latest bandwidth estimate (REMB), while fresh."""
        est = self._estimate
        if est is None or self.clock() - est[0] > ESTIMATE_FRESH_S:
            return None
        return est[1]

    def _ladder_estimate(self) -> float | None:
        return self.estimate_kbps if self.ladder_reads_estimate else None

    @property
    def rtt_ms(self) -> float | None:
        """The latest round-trip time to this receiver (its reports, else aiortc's)."""
        return self._rtt_ms

    @property
    def video_kbps(self) -> float:
        """What the video encoder is given now (the rung's target within the estimate)."""
        return video_bitrate_kbps(self.policy.level, self.estimate_kbps)

    def on_estimate(self, kind: str, kbps: float) -> None:
        """A REMB from this leg's receiver (all its streams together)."""
        if kind == "video":
            self._estimate = (self.clock(), kbps)

    def forwardable(self) -> bool:
        """The rung is the publisher's own quality (its size fits the rung's box, its frame
        rate the rung's cap) and no fault effect applies: the publisher's encoded frames can
        go to this subscriber as they are, with no decode and no encode."""
        if self.effect is not None and self.effect.active():
            return False
        return self._rung_forwards(self.policy.level)

    def _rung_forwards(self, level: QualityLevel) -> bool:
        hub = self.slot.video.hub
        if hub is None or not hub.can_forward or not level.video:
            return False
        if hub.size is not None and frame_size_for(level, *hub.size) != hub.size:
            return False
        # A rung capped below the publisher's rate needs decimating, i.e. transcoding.
        return hub.fps is None or level.max_fps >= hub.fps * FPS_TOLERANCE

    def same_stream(self, a: QualityLevel, b: QualityLevel) -> bool:
        """Both rungs would get the publisher's own stream (the ladder's `same_stream`): a
        step between them changes nothing on the wire, so a step up needs no bandwidth
        headroom and a step down goes on to a rung that does change it."""
        return self._rung_forwards(a) and self._rung_forwards(b)

    def affords_forwarding(self) -> bool:
        """The receiver's path has room for the publisher's own stream. A rung that forwards
        sends whatever the publisher's encoder makes (~300 kbps and up from a 640x480 camera),
        regardless of the receiver's estimate: on a 200 kbps downlink that stream cannot get
        through and video stops instead of degrading, while a transcoded leg's encoder keeps
        within the estimate. Without an estimate yet, or before the stream's bitrate is
        measured, it does forward: a fresh join shows its first frame without an encoder's
        start-up, and the ladder steps down as soon as loss or delay say otherwise."""
        hub = self.slot.video.hub
        estimate = self.estimate_kbps
        if hub is None or hub.kbps is None or estimate is None:
            return True
        return estimate >= hub.kbps * FORWARD_HEADROOM

    def delivery(self) -> Delivery:
        """How this subscriber gets the publisher's video now (RelayTrack.route).

        A transcoded leg switches to forwarded only when `affords_forwarding()`; once
        forwarded it stays so for as long as its rung forwards. Estimates swing by tens of
        percent from one REMB to the next, and each switch to forwarded waits for a keyframe
        from the publisher: switching on every swing would stall video with every swing. A
        path that really cannot carry the stream shows as loss or delay growth, and the
        ladder's own step down to a transcoded rung (it passes over rungs that send the same
        stream) moves the leg off."""
        effect = self.effect is not None and self.effect.active()
        if not self.policy.level.video and not effect:
            return "paused"
        if not self.forwardable():
            return "transcoded"
        if self.slot.video.delivery == "forwarded" or self.affords_forwarding():
            return "forwarded"
        return "transcoded"

    def set_publisher(self, name: str) -> None:
        if self.effect is not None:
            self.effect.participant = name

    def transform(self, frame: Any) -> Any:
        if self.effect is not None:
            frame = self.effect.apply(frame)
        level = self.policy.level
        if level is not self.decimator.level:
            self.decimator.set_level(level)
            self._set_cap()
        if not level.video or not self.decimator.should_send(self.clock()):
            return None
        w, h = frame_size_for(level, frame.width, frame.height)
        if (w, h) == (frame.width, frame.height):
            return frame
        out = frame.reformat(width=w, height=h)
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def observe(self, sample: MetricSample) -> None:
        """A stats sample of the kind that drives the ladder now (see `on_sample`). Once the
        receiver's reports reach us as they arrive (`on_report`), samples bring nothing new:
        their loss and RTT are the last report's, up to a second late, the RTT smoothed."""
        if not self._rtt_from_reports:  # aiortc's smoothed RTT, until reports bring one
            self._rtt_ms = sample.rtt_ms
        if sample.kind not in self._reported:
            self.policy.observe(sample.loss_fraction, sample.rtt_ms, self._ladder_estimate(),
                                at=self.clock())

    def on_report(self, kind: str, loss: float, rtt_ms: float | None = None) -> None:
        """A receiver report about this leg's `kind` stream, as it arrives (videochat.call.rtcp),
        with the round-trip time it measured, if it answered one of our recent sender
        reports."""
        at = self.clock()
        if rtt_ms is not None:
            self._rtt_ms, self._rtt_from_reports = rtt_ms, True
        last = self._reported.get(kind)
        self._reported[kind] = at
        if kind == "audio":
            self._audio_loss = (at, loss, None if last is None else at - last)
        if kind != ("audio" if self.paused else "video"):
            return
        if kind == "video":
            loss = self._confirmed(loss, at)
        # The report covers the time since that receiver's previous one; the first, an
        # unknown stretch (None: the policy takes the time since its last sample).
        self.policy.observe(loss, self._rtt_ms, self._ladder_estimate(), at=at,
                            interval_s=None if last is None else at - last)

    def _confirmed(self, loss: float, at: float) -> float:
        """Video loss, except that only the audio stream can confirm a loss severe enough to
        pause video. At the lowest rungs video carries ~10 packets a second: its loss over
        two seconds cannot tell 30 % from 45 % (30 % paused video in 2 of 3 trials), while
        the audio stream on the same path carries 50 a second and its receiver reports
        span seconds. Without a recent audio report, video's own figure stands."""
        severe = self.policy.t.severe_loss
        audio = self._audio_loss
        if loss < severe or audio is None or at - audio[0] > AUDIO_REPORT_FRESH_S:
            return loss
        when, audio_loss, span = audio
        # ...and only a report that covers time after the last step: a 300 kbps cap still
        # drops what was queued at the higher rung for a while after the step down.
        after_step = span is not None and when - span >= self.policy.changed_at
        return loss if audio_loss >= severe and after_step else min(loss, severe - 0.01)

    @property
    def paused(self) -> bool:
        return not self.policy.level.video


def _encoders(pc: Any, view: SubscriberView) -> RungVp8Encoder | None:
    """Our encoders on a subscriber leg: VP8 at the rung's bitrate within the receiver's
    estimate (aiortc's own keeps 250 kbps at least, more than a 200 kbps path carries), Opus
    at speech rate, whose share comes off the estimate first."""
    try:
        return install_leg_encoders(
            pc, view.policy.level.target_kbps * 1000 if view.policy.level.video else
            VIDEO_FLOOR_KBPS * 1000, start_bps=START_KBPS * 1000,
            audio_bps=AUDIO_KBPS * 1000, floor_bps=VIDEO_FLOOR_KBPS * 1000,
            reserve_bps=AUDIO_RESERVE_KBPS * 1000)
    except Exception:  # noqa: BLE001 - aiortc's own encoders still work
        logger.exception("installing the leg's encoders failed")
        return None


@dataclass
class _Watch:
    participant: Participant
    supervisor: LegSupervisor
    generation_of: dict[int, int] = field(default_factory=dict)  # id(pc) -> generation
    gave_up: bool = False


class CallSupervisor:
    def __init__(
        self,
        registry: RoomRegistry,
        legs: LegRegistry,
        *,
        emit: Emit | None,
        faults: FaultManager | None,
        rebuild: Rebuild,
        counter_of: Callable[[str], FrameCounter] | None = None,
        grace_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.legs = legs
        self.emit = emit
        self.faults = faults
        self.rebuild = rebuild
        self.grace_s = grace_s
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[str, _Watch] = {}
        self._views: dict[str, SubscriberView] = {}  # leg id -> view
        self._hooked: set[int] = set()
        self._counted: set[int] = set()
        self.counter_of = counter_of
        self._task: asyncio.Task[None] | None = None
        self.stalls = 0
        legs.add_listener(self._on_leg)

    # -- legs (called from script threads; hop onto the loop) --------------------------
    def _on_leg(self, leg: MediaLeg, added: bool) -> None:
        if self.loop is None:
            self.loop = leg.loop
            leg.loop.call_soon_threadsafe(self._start)
        leg.loop.call_soon_threadsafe(self._leg_changed, leg, added)

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def _leg_changed(self, leg: MediaLeg, added: bool) -> None:
        me = self.registry.find(leg.participant_id)
        if me is None:
            return
        self._hook_hub(me)
        self._count_frames(me, leg)
        watch = self._watches.get(me.id)
        if added:
            if watch is not None:
                watch.generation_of[id(leg.pc)] = watch.supervisor.generation
            pc = leg.pc

            subscriber = leg.direction == "subscribe" and leg.slot_index is not None
            leg_id = leg.leg_id

            def on_report(kind: str, loss: float, rtt_ms: float | None) -> None:
                view = self._views.get(leg_id)
                if view is not None:
                    view.on_report(kind, loss, rtt_ms)

            def on_estimate(kind: str, kbps: float) -> None:
                view = self._views.get(leg_id)
                if view is not None:
                    view.on_estimate(kind, kbps)

            def watch_reports() -> None:
                # One hook per sender, with both sinks: a sender already hooked is skipped,
                # so a hook without `on_estimate` set first would drop every REMB for good.
                watch_receiver_reports(pc, on_report, on_estimate)
                view = self._views.get(leg_id)
                if view is not None:
                    view.attach_encoder(_encoders(pc, view))
                self._throttle_resends(leg)

            @pc.on("connectionstatechange")
            def _state() -> None:
                if subscriber and pc.connectionState == "connected":
                    self._relay_keyframe_requests(me, leg)
                    watch_reports()  # the senders exist by now, before their first frame
                self._leg_state(leg, pc.connectionState)

            if subscriber:
                self._attach_view(me, leg)
                if pc.connectionState == "connected":  # registered after it connected
                    self._relay_keyframe_requests(me, leg)
                    watch_reports()
        elif watch is not None and leg.closed:
            self._leg_state(leg, "closed")

    def _leg_state(self, leg: MediaLeg, state: str) -> None:
        watch = self._watches.get(leg.participant_id)
        if watch is None:
            return
        if state == "closed" and self._unbound_slot(watch.participant, leg):
            # The page keeps one spare receive leg: when someone leaves, their freed slot and
            # the old spare are both unbound and the page closes one of them. That is not
            # the network (which fails a connection, or stops its media): rebuilding every
            # leg of each remaining participant for it was a needless reconnect.
            return
        gen = watch.generation_of.get(id(leg.pc))
        if gen is not None and gen == watch.supervisor.generation:
            watch.supervisor.connection_state(state, generation=gen)
            if state in ("failed", "closed"):
                # A dead connection needs no more evidence: rebuild now, not at the next tick
                # (up to TICK_S later; a killed connection is back in ~2 s, so it shows).
                self._tick_safely()

    @staticmethod
    def _relay_keyframe_requests(me: Participant, leg: MediaLeg) -> None:
        """A subscriber's PLI reaches the publisher of whatever its slot relays."""
        slot = me.slot_at(leg.slot_index)
        if slot is None:
            return
        for sender in leg.pc.getSenders():
            track = sender.track
            if track is not None and track.kind == "video":
                on_keyframe_request(sender, slot.video.keyframe_requested)

    def _throttle_resends(self, leg: MediaLeg) -> None:
        """A subscriber's NACKs may not make its video sender swamp the path with resends
        (compat.aiortc.RetransmitThrottle): a packet is resent at most once per RTT, and
        resends take at most `RESEND_SHARE` of the receiver's estimate (`RESEND_FLOOR_KBPS`
        at least: in poor-3g, 5 % loss at a low estimate starved every repair and froze
        video for 4 s)."""
        views, leg_id = self._views, leg.leg_id

        def budget_bps() -> float | None:
            view = views.get(leg_id)
            estimate = view.estimate_kbps if view is not None else None
            if estimate is None:
                return None
            return max(estimate * RESEND_SHARE, RESEND_FLOOR_KBPS) * 1000

        def min_gap_s() -> float:
            view = views.get(leg_id)
            rtt = view.rtt_ms if view is not None else None
            return max(RESEND_MIN_GAP_S, (rtt or 0.0) / 1000)

        for sender in leg.pc.getSenders():
            track = sender.track
            if track is not None and track.kind == "video":
                throttle_retransmissions(sender, RetransmitThrottle(budget_bps, min_gap_s),
                                         name=leg_id)

    @staticmethod
    def _unbound_slot(me: Participant, leg: MediaLeg) -> bool:
        if leg.direction != "subscribe":
            return False
        slot = me.slot_at(leg.slot_index)
        return slot is not None and slot.publisher_id is None

    def _hook_hub(self, me: Participant) -> None:
        hub = me.video_hub
        if id(hub) in self._hooked:
            return
        self._hooked.add(id(hub))
        pid = me.id

        def on_frame(frame: Any) -> None:
            if is_video(frame):
                self._frame(pid)

        hub.on_frame.append(on_frame)

    def _count_frames(self, me: Participant, leg: MediaLeg) -> None:
        """Feed the sampler's per-leg frame counter (fps and resolution come from us)."""
        if self.counter_of is None:
            return
        if leg.direction == "publish":
            source: Any = me.video_hub
        else:
            slot = me.slot_at(leg.slot_index)
            if slot is None:
                return
            source = slot.video
        if id(source) in self._counted:
            return
        self._counted.add(id(source))
        counter_of, leg_id = self.counter_of, leg.leg_id

        def on_frame(frame: Any) -> None:
            # Forwarded frames count too, with the size their stream's keyframes carry.
            if is_video(frame) and frame.width > 0:
                counter_of(leg_id).on_frame(frame.width, frame.height)

        source.on_frame.append(on_frame)

    def _frame(self, pid: str) -> None:
        watch = self._watches.get(pid)
        if watch is None:
            me = self.registry.find(pid)
            if me is None:
                return
            room = self.registry.room_of(me)
            ctx = EventContext(me.room, me.name, room.call_id if room else None, f"{pid[:12]}")
            # After a closed/failed connection an attempt is judged by its peer connections,
            # not a short timer (a rebuild keeps ICE checking for ~30 s). After "media
            # stopped" it is replaced within OUTAGE_ATTEMPT_TIMEOUT_S, so the one in flight
            # when the path returns has not gone stale in Chromium (see recovery.py).
            sup = LegSupervisor(self.clock, grace_s=self.grace_s, emit=self.emit, context=ctx,
                                attempt_timeout_s=ATTEMPT_TIMEOUT_S,
                                outage_attempt_timeout_s=OUTAGE_ATTEMPT_TIMEOUT_S)
            watch = self._watches[pid] = _Watch(me, sup)
            for leg in self.legs.legs(participant_id=pid):
                watch.generation_of[id(leg.pc)] = 0
        watch.supervisor.frame_received()

    # -- quality ------------------------------------------------------------------------
    def _attach_view(self, me: Participant, leg: MediaLeg) -> None:
        slot = me.slot_at(leg.slot_index)
        if slot is None:
            return
        view = self._views.get(leg.leg_id)
        publisher = self.registry.find(slot.publisher_id)
        if view is None or view.slot is not slot:
            room = self.registry.room_of(me)
            ctx = EventContext(me.room, me.name, room.call_id if room else None, leg.leg_id)
            old = view
            view = SubscriberView(slot, me.room, publisher.name if publisher else "",
                                  emit=self.emit, faults=self.faults, clock=self.clock,
                                  context=ctx)
            if old is not None:
                view.attach_encoder(old.encoder)
            self._views[leg.leg_id] = view
            slot.video.transform = view.transform
            slot.video.route = view.delivery

    def on_sample(self, sample: MetricSample) -> None:
        """Sampler sink (on the loop): subscriber samples drive that leg's ladder.

        Video reports drive it while video flows; once it is paused (audio-only) no video
        reports arrive, so the audio ones (same path) decide when video may come back.
        """
        if sample.direction != "subscribe":
            return
        view = self._views.get(sample.leg)
        if view is None:
            return
        if sample.kind == ("audio" if view.paused else "video"):
            view.observe(sample)

    def view(self, leg_id: str) -> SubscriberView | None:
        return self._views.get(leg_id)

    def quality_of(self, leg_id: str) -> str | None:
        view = self._views.get(leg_id)
        return view.policy.level.name if view is not None else None

    def delivery_of(self, leg_id: str) -> str | None:
        """How a subscriber leg's video goes out now: forwarded, transcoded or paused."""
        view = self._views.get(leg_id)
        return view.slot.video.delivery if view is not None else None

    def connection_quality(self, leg_id: str) -> ConnectionQuality | None:
        view = self._views.get(leg_id)
        return view.policy.connection_quality() if view is not None else None

    def reconnect_state(self, participant_id: str) -> ReconnectState | None:
        watch = self._watches.get(participant_id)
        return watch.supervisor.state if watch is not None else None

    def gave_up(self, participant_id: str) -> bool:
        watch = self._watches.get(participant_id)
        return bool(watch and watch.gave_up)

    def retry(self, participant_id: str) -> None:
        watch = self._watches.get(participant_id)
        if watch is not None and self.loop is not None:
            watch.gave_up = False
            self.loop.call_soon_threadsafe(watch.supervisor.retry)

    # -- the tick -----------------------------------------------------------------------
    async def _run(self) -> None:
        last = self.clock()
        while True:
            await asyncio.sleep(TICK_S)
            now = self.clock()
            gap, last = now - last, now
            stalled = gap > STALL_S
            if stalled:
                # The loop itself was starved (CPU): frames waiting in socket buffers have not
                # been read yet, so "no frame for 2.5 s" would be our stall, not the network's.
                # Rebuilding then would only add load. Give the backlog one tick to drain.
                self.stalls += 1
                logger.warning("media loop stalled %.1f s; skipping one supervision tick", gap)
                continue
            self._tick_safely()

    def _tick_safely(self) -> None:
        try:
            self.tick()
        except Exception:  # noqa: BLE001 - supervision must outlive any one bug
            logger.exception("call supervisor tick failed")

    def tick(self) -> None:
        for pid, watch in list(self._watches.items()):
            me = self.registry.find(pid)
            if me is None:
                del self._watches[pid]
                continue
            action = watch.supervisor.tick()
            state = watch.supervisor.state
            self.registry.set_state(pid, "joined" if state is ReconnectState.CONNECTED
                                    else "reconnecting")
            if action is Action.REBUILD:
                logger.info("rebuilding the legs of %s in %s (attempt %d)", me.name, me.room,
                            watch.supervisor.generation)
                for leg in self.legs.legs(participant_id=pid):
                    leg.close()
                self.rebuild(me)
            elif action is Action.GIVE_UP:
                watch.gave_up = True
                self.registry.wake([pid])
        for leg_id in [k for k, v in self._views.items()
                       if self.registry.find(v.slot.owner_id) is None]:
            del self._views[leg_id]
        for view in self._views.values():
            publisher = self.registry.find(view.slot.publisher_id)
            if publisher is not None:
                view.set_publisher(publisher.name)
