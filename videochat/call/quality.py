"""Video quality: the fallback ladder, the connection-quality badge, and the per-leg ladder policy.

Pure: no I/O; time comes from a monotonic `clock` passed in (or an explicit `at` on that clock).
Not thread-safe: drive each policy from one thread, normally the media event loop.

Design (why)
------------
* **A ladder, and a bitrate per rung.** Each subscriber leg is told a `QualityLevel` (a
  bounding box, a frame-rate cap, the bitrate its encoder aims at and the floor under which it
  no longer looks right); the relay scales (`frame_size_for`) and decimates (`FrameDecimator`
  / `should_send`) to it, and the leg's encoder (videochat/compat/encoders.py) is given
  `video_bitrate_kbps`: the rung's target, or the receiver's estimate (REMB) less audio's
  share when that is lower, never under 30 kbps. aiortc's own VP8 encoder would keep 250 kbps
  at least whatever the rung, more than a 200 kbps path carries. Targets / floors (kbps),
  after LiveKit's presets: 720p30 1500/500 -> 480p30 800/300 -> 360p24 450/180 (LiveKit's
  h360) -> 240p15 200/90 -> 180p10 100/50 (LiveKit's h180) -> audio-only (video paused,
  placeholder tile; Opus at 32 kbps, served first).
* **Down fast, up slowly, never flap.** `QualityPolicy.observe()` is fed each leg's stats sample
  (loss fraction, RTT, the receiver's *available*-bitrate estimate when one exists, and how
  much media time the sample covers). Each sample is *bad*, *good* or *neutral*; the band
  between the down and the up thresholds is neutral and holds the level (hysteresis). The loss
  thresholds are GCC's, the congestion control every browser runs: above 10 % loss it cuts its
  rate, below 2 % it may raise it. RTT counts only as **delay growth** (`DelayTrend`): RTT
  above its 10 s minimum by more than 150 ms, reached by three consecutive rises: a queue
  building at the bottleneck, which shows before loss does. A constant latency (a long path,
  or one that jumped once and stayed) is not congestion: stepping down would not shorten it.
  A standing queue up to 300 ms over the minimum does not block a climb. Evidence
  is counted in *media time*: consecutive bad samples must cover `down_after_s` = 0.5 s, the
  shortest interval between two receiver reports (aiortc and Chrome send one every 0.5-1.5 s,
  RFC 3550's randomised interval). So every bad report is enough, as GCC too reacts to each
  report, while a shorter blip seen by a fast counter-delta sampler is not. The step then comes
  with the first report that shows the loss: within ~1.5 s of the onset, or ~2 s if the onset
  fell late in a report's interval and diluted it below 10 %. Feed the policy each fresh report
  (or sample at 2-4 Hz), never once a second on a timer: that would add up to a second.
  - Down: bad for `down_after_s` = 0.5 s, and at least `down_hold_s` = 1 s after the previous
    change (the new level needs that long to show in the stats); evidence from before a change
    never counts for the next one. Loss and delay growth step one rung at a time and stop at
    the lowest video rung; only `severe_loss` (40 %: most frames cannot be reassembled) or an
    estimate below the lowest rung's floor pauses video. An estimate below the rung's floor
    jumps straight to the best rung whose floor fits, since it is a direct measure of what the
    path carries.
  - Up: one rung at a time, after `up_after_s` = 7 s of continuously good samples following a
    down-step, then `up_step_s` = 4 s per further rung while it stays good: from 180p10 to 720p30
    takes 7 + 3 x 4 = 19 s of good conditions, from audio-only 23 s. Why 7 and not 10: the issue
    promises the first step up within 10 s of the network clearing, and receiver reports add up
    to ~1.5 s before the first clean report and ~1.5 s before the one that crosses the mark.
    An up-step needs `up_bitrate_headroom` (1.25) x the next rung's floor when an estimate is
    known (the floor, not the target: a receiver's REMB tops out near 1.5 x what it gets, so a
    rung whose encoder is held under its target by the estimate could never prove the next),
    except between two rungs that send the same stream (`same_stream`: both forward the
    publisher's own frames, e.g. 480p30 and 720p30 for a 640x480 camera), where nothing
    changes on the wire. For the same reason a step down on loss or delay growth passes over
    such rungs to the first one that changes the stream, when there is one within reach.
    Whether a forwarding rung's stream fits the path is the supervisor's call
    (`SubscriberView.delivery`), made against the stream's measured bitrate, not against a
    rung's floor.
  - No flapping: if conditions turn bad within `failed_up_window_s` = 10 s of an up-step, that
    probe failed and the next first up-step waits twice as long (capped at 60 s): exponential
    backoff of failed bandwidth probes. An up-step that holds for the window resets the wait.
    So oscillating conditions produce at most a few changes, never one per cycle.
* **Badge.** `ConnectionQuality` is what a tile shows (excellent / good / poor / lost, as LiveKit):
  from the same thresholds plus the rung in use, since 240p or less looks poor whatever the loss.
* **Rebuilt legs start lower.** `start_level()` starts a fresh leg at 480p30 (our cameras are
  640x480; 720p would need 1.5 Mbps at once) and a rebuilt one at 360p24 at most: the path just
  failed. `uplink_cap()` caps the browser's camera when its publishing leg is rebuilt: that leg
  cannot be renegotiated later and feeds every subscriber, so the cap is loose (480p30, or 360p24
  after trouble), and Chrome's own sender adapts below it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from videochat.call.recovery import Emit, EventContext, wall_at
from videochat.clocks import Monotonic, WallClock, utcnow
from videochat.exceptions import ValidationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityLevel:
    """One rung: a bounding box (long x short side), a frame-rate cap, the bitrate its encoder
    aims at (`target_kbps`, the most it is given) and the least it still looks right at
    (`floor_kbps`: below that estimate the ladder steps down)."""

    name: str
    max_width: int
    max_height: int
    max_fps: int
    target_kbps: int
    floor_kbps: int
    rank: int  # 0 = best

    @property
    def video(self) -> bool:
        return self.max_fps > 0


LADDER: tuple[QualityLevel, ...] = (
    QualityLevel("720p30", 1280, 720, 30, 1500, 500, 0),
    QualityLevel("480p30", 854, 480, 30, 800, 300, 1),
    QualityLevel("360p24", 640, 360, 24, 450, 180, 2),
    QualityLevel("240p15", 426, 240, 15, 200, 90, 3),
    QualityLevel("180p10", 320, 180, 10, 100, 50, 4),
    QualityLevel("audio-only", 0, 0, 0, 40, 0, 5),
)
AUDIO_KBPS = 32  # Opus for speech: 32 kbps is transparent; aiortc's 96 kbps default is music
AUDIO_RESERVE_KBPS = 40  # what audio takes of an estimate, headers included: served first
VIDEO_FLOOR_KBPS = 30  # the least a video encoder is given (aiortc's own floor is 250)
TOP = LADDER[0]
LOWEST_VIDEO = LADDER[-2]
AUDIO_ONLY = LADDER[-1]


def level_named(name: str) -> QualityLevel:
    for level in LADDER:
        if level.name == name:
            return level
    raise ValidationError("quality level", name, f"must be one of {[q.name for q in LADDER]}")


def step_down(level: QualityLevel) -> QualityLevel:
    return LADDER[min(level.rank + 1, len(LADDER) - 1)]


def step_up(level: QualityLevel) -> QualityLevel:
    return LADDER[max(level.rank - 1, 0)]


def best_fitting(bitrate_kbps: float) -> QualityLevel:
    """The best rung whose floor is within `bitrate_kbps` (audio-only if none)."""
    for level in LADDER:
        if level.video and level.floor_kbps <= bitrate_kbps:
            return level
    return AUDIO_ONLY


def video_bitrate_kbps(level: QualityLevel, estimate_kbps: float | None) -> float:
    """What a rung's video encoder is given: the rung's target, or less when the receiver's
    estimate (REMB) is lower, after audio has taken its share (audio keeps priority), never
    under `VIDEO_FLOOR_KBPS` (a lower figure starves the encoder into slide shows; the ladder
    steps down well before)."""
    target = float(level.target_kbps)
    if estimate_kbps is not None and not math.isnan(estimate_kbps):
        target = min(target, estimate_kbps - AUDIO_RESERVE_KBPS)
    return max(float(VIDEO_FLOOR_KBPS), target)


# ----------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class QualityThresholds:
    """Ladder tuning; the module docstring says why each default is what it is."""

    window_s: float = 1.0  # smoothing of the badge's loss/RTT only
    severe_window_s: float = 3.0  # pausing video needs severe loss on average over this long
    max_interval_s: float = 2.0  # a sample after a stall counts for at most this much evidence
    down_loss: float = 0.10  # GCC cuts its rate above 10 % loss
    up_loss: float = 0.02  # ...and may raise it below 2 %: between is the hysteresis band
    severe_loss: float = 0.40  # most frames lost: only then may loss alone pause video
    # The badge's RTT bands: above 500 ms a conversation breaks down (ITU-T G.114 puts the
    # one-way limit at 400 ms). The ladder does not read RTT as such (a constant latency is
    # no congestion: stepping down does not shorten a long path), only its growth below.
    down_rtt_ms: float = 500.0
    up_rtt_ms: float = 400.0
    # Delay growth (a queue building up at the bottleneck, before it overflows into loss):
    # RTT above its minimum over the last `delay_window_s` (the path's own latency) by more
    # than `delay_growth_ms`, reached by `delay_rises` consecutive rises of `delay_rise_ms`
    # or more. A latency that jumps once and stays (a longer route, the injector's latency)
    # is one rise, not three. A standing queue up to `standing_queue_ms` over the minimum
    # does not block a climb (aiortc's RTT reads 150-320 ms on a busy loop).
    delay_window_s: float = 10.0
    delay_growth_ms: float = 150.0
    delay_rise_ms: float = 20.0
    delay_rises: int = 3
    standing_queue_ms: float = 300.0
    up_bitrate_headroom: float = 1.25  # the next rung must fit with room, or it congests at once
    down_after_s: float = 0.5  # one receiver report's worth; not a shorter blip
    down_hold_s: float = 1.0  # a new rung needs a report interval to show in the stats
    up_after_s: float = 7.0  # first up-step after trouble: slow, yet 10 s with report lag
    up_step_s: float = 4.0  # further up-steps while it stays good
    failed_up_window_s: float = 10.0  # trouble this soon after an up-step: the probe failed
    up_backoff_factor: float = 2.0  # ...and the next probe waits twice as long
    max_up_after_s: float = 60.0  # but never more than a minute

    def __post_init__(self) -> None:
        def rule(ok: bool, what: str, value: object, text: str) -> None:
            if not ok:
                raise ValidationError(f"quality threshold {what}", value, text)

        rule(0 <= self.up_loss < self.down_loss <= self.severe_loss <= 1, "loss",
             (self.up_loss, self.down_loss, self.severe_loss),
             "need 0 <= up_loss < down_loss <= severe_loss <= 1")
        rule(0 < self.up_rtt_ms < self.down_rtt_ms, "rtt", (self.up_rtt_ms, self.down_rtt_ms),
             "need 0 < up_rtt_ms < down_rtt_ms")
        rule(self.up_bitrate_headroom >= 1, "up_bitrate_headroom", self.up_bitrate_headroom,
             "must be >= 1")
        rule(0 < self.delay_growth_ms <= self.standing_queue_ms, "delay",
             (self.delay_growth_ms, self.standing_queue_ms),
             "need 0 < delay_growth_ms <= standing_queue_ms")
        rule(self.delay_rises >= 1, "delay_rises", self.delay_rises, "must be >= 1")
        rule(self.delay_rise_ms >= 0, "delay_rise_ms", self.delay_rise_ms, "must be >= 0")
        for name in ("window_s", "delay_window_s", "max_interval_s", "down_after_s",
                     "down_hold_s", "up_after_s", "up_step_s", "failed_up_window_s"):
            rule(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        rule(self.up_backoff_factor >= 1, "up_backoff_factor", self.up_backoff_factor,
             "must be >= 1")
        rule(self.max_up_after_s >= self.up_after_s, "max_up_after_s", self.max_up_after_s,
             "must be >= up_after_s")


DEFAULT_THRESHOLDS = QualityThresholds()
_EPS = 1e-9  # 0.5 + 0.5 must count as a full second


# ------------------------------------------------------------------------------------ the badge
class ConnectionQuality(StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


def connection_quality(loss_fraction: float | None, rtt_ms: float | None,
                       level: QualityLevel | None = None, *, flowing: bool = True,
                       thresholds: QualityThresholds = DEFAULT_THRESHOLDS) -> ConnectionQuality:
    """The tile's badge. `flowing=False` (the watchdog says no media) is always LOST."""
    if not flowing:
        return ConnectionQuality.LOST
    loss = loss_fraction or 0.0
    rtt = rtt_ms or 0.0
    rank = 0 if level is None else level.rank
    if loss >= thresholds.down_loss or rtt >= thresholds.down_rtt_ms or rank >= 3:
        return ConnectionQuality.POOR
    if loss > thresholds.up_loss or rtt > thresholds.up_rtt_ms or rank >= 2:
        return ConnectionQuality.GOOD
    return ConnectionQuality.EXCELLENT


# ------------------------------------------------------------------------------- delay growth
class DelayTrend:
    """RTT against its recent minimum: tells a queue that grows from a path that is long.

    `add()` each RTT sample; `excess_ms` is how far it is above the minimum of the last
    `delay_window_s`, `growing` whether it got there by `delay_rises` consecutive rises (a
    fall of more than `delay_rise_ms` starts the count over; changes smaller than that are
    noise and leave it as it is).
    """

    def __init__(self, thresholds: QualityThresholds) -> None:
        self.t = thresholds
        self._samples: deque[tuple[float, float]] = deque()  # (at, rtt), minimum at the left
        self._last: float | None = None
        self.rises = 0
        self.excess_ms = 0.0

    @property
    def growing(self) -> bool:
        return self.rises >= self.t.delay_rises and self.excess_ms > self.t.delay_growth_ms

    def add(self, at: float, rtt_ms: float) -> None:
        samples = self._samples
        while samples and samples[-1][1] >= rtt_ms:
            samples.pop()  # a monotonic deque: its left end is the window's minimum
        samples.append((at, rtt_ms))
        while samples[0][0] <= at - self.t.delay_window_s:
            samples.popleft()
        self.excess_ms = rtt_ms - samples[0][1]
        last = self._last
        if last is not None:
            if rtt_ms >= last + self.t.delay_rise_ms:
                self.rises = self.rises + 1 if self.excess_ms > 0 else 0
            elif rtt_ms <= last - self.t.delay_rise_ms:
                self.rises = 0
        self._last = rtt_ms
        if self.excess_ms <= self.t.delay_growth_ms:
            self.rises = min(self.rises, self.t.delay_rises - 1)  # must climb past it again

    def clear(self) -> None:
        self._samples.clear()
        self._last = None
        self.rises = 0
        self.excess_ms = 0.0


# ------------------------------------------------------------------------------------ the policy
@dataclass(frozen=True)
class QualityChange:
    at: float
    from_level: QualityLevel
    to_level: QualityLevel
    reason: str

    @property
    def direction(self) -> str:
        return "down" if self.to_level.rank > self.from_level.rank else "up"


SameStream = Callable[[QualityLevel, QualityLevel], bool]
"""Whether two rungs send the receiver the very same stream (both forward the publisher's own
encoded frames: `SubscriberView.same_stream`); the ladder knows nothing of the relay."""


class QualityPolicy:
    """The ladder for one subscriber leg: `observe()` each stats sample, apply what it returns."""

    def __init__(self, clock: Monotonic, *, start: QualityLevel | None = None,
                 ceiling: QualityLevel = TOP,
                 thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
                 emit: Emit | None = None, context: EventContext | None = None,
                 wall: WallClock = utcnow,
                 same_stream: SameStream | None = None) -> None:
        self._clock, self._wall, self._emit = clock, wall, emit
        self._same_stream = same_stream
        self.t = thresholds
        self.context = context or EventContext(room="")
        self.ceiling = ceiling
        first = start or start_level()
        self.level = first if first.rank >= ceiling.rank else ceiling
        self.changed_at = clock()
        self.changes: list[QualityChange] = []
        self._window: deque[tuple[float, float | None, float | None]] = deque()
        self._severe: deque[tuple[float, float | None, float]] = deque()  # (at, loss, weight)
        self._severe_mean = 0.0
        self._last_at: float | None = None
        self._bad_since: float | None = None
        self._good_since: float | None = None
        self._last_up_at: float | None = None
        self._up_after = thresholds.up_after_s
        self.delay = DelayTrend(thresholds)
        self.loss: float | None = None  # window means, for the badge and the diagnostics
        self.rtt_ms: float | None = None

    @property
    def up_after_s(self) -> float:
        """Good time the next first up-step needs (grows after failed probes)."""
        return self._up_after

    def connection_quality(self, *, flowing: bool = True) -> ConnectionQuality:
        return connection_quality(self.loss, self.rtt_ms, self.level, flowing=flowing,
                                  thresholds=self.t)

    def observe(self, loss_fraction: float | None, rtt_ms: float | None = None,
                bitrate_kbps: float | None = None, at: float | None = None, *,
                interval_s: float | None = None) -> QualityLevel | None:
        """Feed one sample; returns the new level when it changes, else None.

        `loss_fraction` in [0, 1] over the sample's interval (an RTCP report's fractionLost, or
        a delta of counters); `rtt_ms` as measured (None if unknown); `bitrate_kbps` an estimate
        of what the path can carry (REMB, the browser's availableIncomingBitrate), not what we
        happen to send, or None. `interval_s` is how much media time the sample covers; by
        default the time since the previous sample (a first sample only starts the clock).
        """
        at = self._clock() if at is None else at
        last = self._last_at
        if last is not None and at < last:
            logger.debug("sample at %.3f is older than %.3f; ignored", at, last)
            return None
        self._last_at = at
        if interval_s is None:
            interval_s = 0.0 if last is None else at - last
        interval = min(max(0.0, interval_s), self.t.max_interval_s)
        loss = _clean(loss_fraction)
        rtt = None if rtt_ms is None or math.isnan(rtt_ms) else max(0.0, rtt_ms)
        bitrate = None if bitrate_kbps is None or math.isnan(bitrate_kbps) else bitrate_kbps
        self._smooth(at, loss, rtt, interval)
        if rtt is not None:
            self.delay.add(at, rtt)

        if self._last_up_at is not None and at - self._last_up_at > self.t.failed_up_window_s:
            self._up_after = self.t.up_after_s  # the last probe held: trust the path again
            self._last_up_at = None

        # Evidence is counted in media time covered by consecutive samples of one verdict,
        # never from before the last change (that was the old level's evidence).
        covered_from = max(at - interval, self.changed_at)
        verdict, target, reason = self._judge(loss, rtt, bitrate)
        if verdict == "bad":
            self._good_since = None
            if self._bad_since is None:
                self._bad_since = covered_from
            if (at - self._bad_since >= self.t.down_after_s - _EPS
                    and at - self.changed_at >= self.t.down_hold_s - _EPS
                    and target is not self.level):
                return self._change(target, at, reason)
        elif verdict == "good":
            self._bad_since = None
            if self._good_since is None:
                self._good_since = covered_from
            climbing = self._last_up_at is not None
            needed = self.t.up_step_s if climbing else self._up_after
            if at - self._good_since >= needed - _EPS and target is not self.level:
                return self._change(target, at, reason)
        else:
            self._bad_since = self._good_since = None
        return None

    def _smooth(self, at: float, loss: float | None, rtt: float | None,
                interval: float = 0.0) -> None:
        """Means over the last `window_s`, for the badge and the diagnostics only."""
        self._window.append((at, loss, rtt))
        while self._window and self._window[0][0] <= at - self.t.window_s:
            self._window.popleft()
        losses = [s[1] for s in self._window if s[1] is not None]
        rtts = [s[2] for s in self._window if s[2] is not None]
        self.loss = sum(losses) / len(losses) if losses else None
        self.rtt_ms = sum(rtts) / len(rtts) if rtts else None
        # Weighted by the media time each sample covers: receivers report right after they
        # notice a loss (a NACK carries a report), so a plain mean over reports leans towards
        # the lossy moments (30 % loss read as 40 %+ at 10 fps and paused video).
        self._severe.append((at, loss, max(interval, 1e-3)))
        while self._severe and self._severe[0][0] <= at - self.t.severe_window_s:
            self._severe.popleft()
        known = [(x, w) for _, x, w in self._severe if x is not None]
        weight = sum(w for _, w in known)
        self._severe_mean = sum(x * w for x, w in known) / weight if weight else 0.0

    def _judge(self, loss: float | None, rtt: float | None,
               bitrate: float | None) -> tuple[str, QualityLevel, str]:
        t, level, delay = self.t, self.level, self.delay
        if bitrate is not None and level.video and bitrate < level.floor_kbps:
            # The receiver's estimate is a direct measure of what the path carries: go
            # straight to the rung that fits it rather than one step per report.
            target = _not_above(best_fitting(bitrate), step_down(level))
            return "bad", target, f"bitrate {bitrate:.0f} kbps"
        lossy = loss is not None and loss >= t.down_loss
        if lossy or delay.growing:
            # One receiver report is a small sample at low frame rates: pausing video needs
            # the recent mean to be severe too, not a single unlucky report.
            severe = (loss is not None and loss >= t.severe_loss
                      and self._severe_mean >= t.severe_loss)
            floor = AUDIO_ONLY if severe else LOWEST_VIDEO
            target = step_down(level)
            if self._same_stream is not None and self._same_stream(level, target):
                # Nothing would change on the wire: a step that cannot relieve the path
                # would only cost another `down_hold_s` of loss before the next one. When
                # no rung within reach changes the stream either, one step it is (as
                # without the predicate): dropping to the floor would only leave the leg
                # there, transcoded, once the publisher's stream grows again.
                changes = target
                while changes.rank < floor.rank and self._same_stream(level, changes):
                    changes = step_down(changes)
                if not self._same_stream(level, changes):
                    target = changes
            if target.rank > floor.rank:
                target = level if level.rank >= floor.rank else floor
            what = (f"loss {loss:.0%}" if lossy and loss is not None
                    else f"delay growth {delay.excess_ms:.0f} ms")
            return "bad", target, what
        queue_ok = rtt is None or delay.excess_ms <= t.standing_queue_ms
        if loss is not None and loss <= t.up_loss and queue_ok:
            nxt = step_up(level) if level.rank > self.ceiling.rank else level
            if (nxt is not level and bitrate is not None
                    and bitrate < nxt.floor_kbps * t.up_bitrate_headroom
                    and not (self._same_stream is not None and self._same_stream(level, nxt))):
                return "neutral", level, "bitrate too low to step up"
            return "good", nxt, "conditions good"
        return "neutral", level, "hold"

    def _change(self, to: QualityLevel, at: float, reason: str) -> QualityLevel:
        change = QualityChange(at, self.level, to, reason)
        if change.direction == "down":
            last_up = self._last_up_at
            if last_up is not None and at - last_up <= self.t.failed_up_window_s:
                self._up_after = min(self._up_after * self.t.up_backoff_factor,
                                     self.t.max_up_after_s)
            self._last_up_at = None
        else:
            self._last_up_at = at
        self.level, self.changed_at = to, at
        # The conditions that caused the change still hold: the next step's clock starts now.
        down = change.direction == "down"
        self._bad_since, self._good_since = (at, None) if down else (None, at)
        self.changes.append(change)
        logger.info("quality %s -> %s (%s)", change.from_level.name, to.name, reason)
        if self._emit is not None:
            self._emit(self.context.event(
                "quality_changed", wall_at(self._clock, self._wall, at),
                from_level=change.from_level.name, to_level=to.name,
                direction=change.direction, reason=reason,
                loss=None if self.loss is None else round(self.loss, 4),
                rtt_ms=None if self.rtt_ms is None else round(self.rtt_ms, 1)))
        return to

    def reset(self, level: QualityLevel, at: float | None = None) -> None:
        """The leg was rebuilt: start over at `level` (see `start_level`), forgetting samples."""
        self.level = level if level.rank >= self.ceiling.rank else self.ceiling
        self.changed_at = self._clock() if at is None else at
        self._window.clear()
        self._severe.clear()
        self._severe_mean = 0.0
        self.delay.clear()
        self._bad_since = self._good_since = self._last_up_at = None
        self.loss = self.rtt_ms = None


def _clean(loss: float | None) -> float | None:
    if loss is None or math.isnan(loss):
        return None
    return min(1.0, max(0.0, loss))  # stats deltas can dip below 0 with duplicates or reordering


def _not_above(level: QualityLevel, cap: QualityLevel) -> QualityLevel:
    return level if level.rank >= cap.rank else cap


# ----------------------------------------------------------------------------- legs and uplinks
def start_level(previous: QualityLevel | None = None, *, rebuilding: bool = False) -> QualityLevel:
    """Where a leg starts: 480p30 fresh; after a rebuild no better than 360p24 nor `previous`."""
    if not rebuilding:
        return LADDER[1]
    level = LADDER[2] if previous is None or previous.rank < 2 else previous
    return level if level.video else LOWEST_VIDEO


def uplink_cap(previous: QualityLevel | None = None) -> QualityLevel:
    """Camera cap for a (re)built publishing leg: 480p30, or 360p24 if the leg was struggling."""
    return LADDER[1] if previous is None or previous.rank <= 1 else LADDER[2]


def media_constraints(level: QualityLevel) -> dict[str, Any]:
    """getUserMedia constraints for an uplink capped at `level` (video off for audio-only)."""
    if not level.video:
        return {"audio": True, "video": False}
    return {"audio": True, "video": {
        "width": {"ideal": level.max_width, "max": level.max_width},
        "height": {"ideal": level.max_height, "max": level.max_height},
        "frameRate": {"ideal": level.max_fps, "max": level.max_fps},
    }}


# ------------------------------------------------------------------------ scaling and decimation
def frame_size_for(level: QualityLevel, src_w: int, src_h: int) -> tuple[int, int]:
    """Output size for a `src_w` x `src_h` frame: fits the rung's box (matched to the frame's
    orientation), keeps the aspect ratio, never upscales, even dimensions (VP8/I420 need them)."""
    if not level.video:
        raise ValidationError("quality level", level.name, "audio-only has no frame size")
    if src_w < 2 or src_h < 2:
        raise ValidationError("frame size", (src_w, src_h), "must be at least 2x2")
    box_w, box_h = ((level.max_width, level.max_height) if src_w >= src_h
                    else (level.max_height, level.max_width))
    scale = min(1.0, box_w / src_w, box_h / src_h)
    w = max(2, round(src_w * scale) // 2 * 2)
    h = max(2, round(src_h * scale) // 2 * 2)
    return w, h


def should_send(level: QualityLevel, frame_index: int, source_fps: float) -> bool:
    """Stateless decimation by frame index: keeps an evenly spread `max_fps` of `source_fps`."""
    if not level.video:
        return False
    if source_fps <= level.max_fps or frame_index <= 0:
        return True
    ratio = level.max_fps / source_fps
    return math.floor(frame_index * ratio + 1e-9) != math.floor((frame_index - 1) * ratio + 1e-9)


class FrameDecimator:
    """Decimation by timestamp (frame.time, or arrival time) for sources with jittery rates."""

    TOLERANCE = 0.25  # of an interval: a frame slightly early still counts for its slot

    def __init__(self, level: QualityLevel) -> None:
        self.level = level
        self._next: float | None = None

    def set_level(self, level: QualityLevel) -> None:
        self.level = level

    def should_send(self, t: float) -> bool:
        if not self.level.video:
            self._next = None
            return False
        interval = 1.0 / self.level.max_fps
        nxt = self._next
        if nxt is not None and t < nxt - interval * self.TOLERANCE:
            return False
        # Keep a steady cadence while frames keep up; after a gap (or a rewind) restart from t.
        base = nxt if nxt is not None and t - nxt < interval else t
        self._next = base + interval
        return True
