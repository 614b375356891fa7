"""What each participant's page measures itself: browser `getStats()` reports, validated.

The server sees only its own half of each leg (aiortc's counters, `metrics/stats.py`). The
browser knows what the person saw and sent: freezes (Chromium's `freezeCount` /
`totalFreezesDuration`), jitter-buffer delay, concealed audio, decode time, dropped frames, its
uplink estimate. The call page's companion (`ui/companion.js`) reads `getStats()` of each of
its peer connections once a second, and every 4 s POSTs the batch over the call's own
signalling route (`POST /_vc/offer` with `type: "stats"`, `ui/webrtc.py`), authenticated by the
participant's token; this module checks the batch and turns it into `MetricSample`s with
`source="browser"` and leg `<leg>@browser`, stored by the `MetricsStore` beside the server's
samples in the same bucket layout.

Refusals (status, and a message naming the bad value):
- 413 a body over `MAX_BODY_BYTES` (checked before parsing);
- 400 a malformed batch or sample: unknown field, wrong type, value out of range, too many
  samples, a sample older than `MAX_AGE_S`;
- 403 a sample for a leg that is not the token holder's, or a batch with no live leg of this
  process (samples of the holder's own legs that ended meanwhile are dropped, the rest kept);
- 429 more batches than `RATE_PER_S` (burst `BURST`) from one participant;
- 503 the metrics store is busy (buffer filling, MongoDB down): browser data is shed first,
  the server's own samples keep their room. The page drops that batch and carries on.

Times: a page's clock may be off, so each sample's time is taken relative to the batch's own
`sent_at` and placed on the server clock at receipt (the network delay, milliseconds, is
ignored).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from videochat.clocks import WallClock, utcnow
from videochat.exceptions import ValidationError
from videochat.metrics.stats import MetricSample

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 128 * 1024
MAX_SAMPLES = 64  # 4 s x up to 7 legs of a full room, with room to spare
MAX_AGE_S = 60.0
RATE_PER_S = 0.5  # the page sends one batch per 4 s
BURST = 4
BROWSER_SUFFIX = "@browser"

# name -> (type, lowest, highest); None is always allowed (the browser did not report it).
NUMBERS: dict[str, tuple[type, float, float]] = {
    "bitrate_in_kbps": (float, 0, 1e6), "bitrate_out_kbps": (float, 0, 1e6),
    "rtt_ms": (float, 0, 60_000), "loss_fraction": (float, 0, 1),
    "jitter_ms": (float, 0, 60_000), "fps": (float, 0, 240),
    "width": (int, 0, 16_384), "height": (int, 0, 16_384),
    "freeze_count": (int, 0, 1e6), "freeze_s": (float, 0, 1e6),
    "jitter_buffer_ms": (float, 0, 60_000), "concealed_pct": (float, 0, 100),
    "decode_ms": (float, 0, 10_000), "frames_dropped": (int, 0, 1e9),
    "available_out_kbps": (float, 0, 1e6),
}
SAMPLE_KEYS = frozenset({"key", "at", *NUMBERS})
BATCH_KEYS = frozenset({"type", "token", "sent_at", "samples"})


class LegLike(Protocol):
    leg_id: str
    room: str
    participant: str
    participant_id: str
    direction: str
    call_id: str | None


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None


def _number(where: str, name: str, value: Any) -> float | int | None:
    if value is None:
        return None
    kind, lo, hi = NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{where}.{name}", value, "must be a number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValidationError(f"{where}.{name}", value, f"must be between {lo:g} and {hi:g}")
    if kind is int:
        if value != int(value):
            raise ValidationError(f"{where}.{name}", value, "must be a whole number")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class BrowserReport:
    """One leg's second as its page measured it (validated; times in the page's clock, ms)."""

    key: str
    at_ms: float
    values: Mapping[str, float | int | None]

    @classmethod
    def parse(cls, raw: Any, index: int) -> BrowserReport:
        where = f"samples[{index}]"
        if not isinstance(raw, dict):
            raise ValidationError(where, raw, "must be an object")
        unknown = sorted(set(raw) - SAMPLE_KEYS)
        if unknown:
            raise ValidationError(f"{where} field", unknown[0], "is not a known browser stat")
        key = raw.get("key")
        if not isinstance(key, str) or not 1 <= len(key) <= 80:
            raise ValidationError(f"{where}.key", key, "must be a streamer key")
        at = raw.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValidationError(f"{where}.at", at, "must be a time in ms")
        values = {name: _number(where, name, raw.get(name)) for name in NUMBERS}
        return cls(key=key, at_ms=float(at), values=values)


@dataclass(frozen=True)
class BrowserBatch:
    sent_at_ms: float
    reports: tuple[BrowserReport, ...]

    @classmethod
    def parse(cls, raw: Any) -> BrowserBatch:
        if not isinstance(raw, dict):
            raise ValidationError("stats batch", raw, "must be a JSON object")
        unknown = sorted(set(raw) - BATCH_KEYS)
        if unknown:
            raise ValidationError("stats batch field", unknown[0], "is not expected")
        sent = raw.get("sent_at")
        if isinstance(sent, bool) or not isinstance(sent, int | float) or not math.isfinite(sent):
            raise ValidationError("sent_at", sent, "must be a time in ms")
        samples = raw.get("samples")
        if not isinstance(samples, list):
            raise ValidationError("samples", samples, "must be a list")
        if len(samples) > MAX_SAMPLES:
            raise ValidationError("samples", f"{len(samples)} samples",
                                  f"at most {MAX_SAMPLES} per batch")
        reports = tuple(BrowserReport.parse(s, i) for i, s in enumerate(samples))
        for i, r in enumerate(reports):
            age = (float(sent) - r.at_ms) / 1000.0
            if not -1.0 <= age <= MAX_AGE_S:
                raise ValidationError(f"samples[{i}].at", r.at_ms,
                                      f"must be within {MAX_AGE_S:g} s before sent_at")
        return cls(sent_at_ms=float(sent), reports=reports)


class _Bucket:
    """A token bucket: `rate` per second, at most `burst` at once."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class BrowserStats:
    """Checks batches from the pages and hands their samples to the store's `sink`."""

    def __init__(
        self,
        sink: Callable[[MetricSample], None],
        *,
        busy: Callable[[], bool] = lambda: False,
        clock: WallClock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
    ) -> None:
        self._sink = sink
        self._busy = busy
        self._clock = clock
        self._monotonic = monotonic
        self._rate, self._burst = rate_per_s, burst
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._last: dict[str, tuple[datetime, MetricSample]] = {}  # browser leg -> newest
        self._last_second: dict[str, datetime] = {}
        self.counts: dict[int, int] = {}  # status -> batches (read by tests and the sidebar)

    def ingest(self, raw: Any, *, owner: str,
               resolve: Callable[[str], LegLike | None]) -> Reply:
        """One batch from the page of participant `owner` (the id prefix its token stands for);
        `resolve` finds the live leg of a streamer key."""
        reply = self._ingest(raw, owner, resolve)
        with self._lock:
            self.counts[reply.status] = self.counts.get(reply.status, 0) + 1
        if reply.status >= 400:
            logger.debug("browser stats from %s refused: %s %s", owner, reply.status, reply.body)
        return reply

    def _ingest(self, raw: Any, owner: str,
                resolve: Callable[[str], LegLike | None]) -> Reply:
        try:
            batch = BrowserBatch.parse(raw)
        except ValidationError as exc:
            return Reply(400, {"error": str(exc)})
        legs: list[LegLike | None] = []
        ended: list[tuple[int, str]] = []
        for i, report in enumerate(batch.reports):
            leg = resolve(report.key)
            if leg is None:
                # A leg of the owner's that ended while the batch was on its way (rebuilt
                # under loss, a spare the page closed): its samples are dropped, the rest of
                # the batch is kept. Refusing the batch lost the live legs' seconds too.
                if _key_owner(report.key) != owner:
                    return Reply(403, {"error": f"samples[{i}].key {report.key!r} is not "
                                                "yours"})
                ended.append((i, report.key))
            elif leg.participant_id[:12] != owner:
                return Reply(403, {"error": f"samples[{i}].key {report.key!r} is not yours"})
            legs.append(leg)
        if len(ended) == len(batch.reports):
            i, key = ended[0]
            return Reply(403, {"error": f"samples[{i}].key {key!r} is not a live leg of this "
                                        "server"})
        with self._lock:
            bucket = self._buckets.get(owner)
            now_m = self._monotonic()
            if bucket is None:
                bucket = self._buckets[owner] = _Bucket(self._rate, self._burst, now_m)
            allowed = bucket.take(now_m)
        if not allowed:
            return Reply(429, {"error": f"more than {self._rate:g} stats batches/s"},
                         retry_after_s=math.ceil(1 / self._rate))
        if self._busy():
            return Reply(503, {"error": "server busy: browser stats shed"}, retry_after_s=10)
        received = self._clock()
        stored = 0
        for report, leg in zip(batch.reports, legs, strict=True):
            if leg is None:
                continue
            at = received - timedelta(milliseconds=batch.sent_at_ms - report.at_ms)
            sample = self._sample(report, leg, at.replace(microsecond=0))
            if sample is None:
                continue
            self._sink(sample)
            stored += 1
        body: dict[str, Any] = {"stored": stored}
        if ended:
            body["ended_legs"] = [key for _, key in ended]
        return Reply(200, body)

    def _sample(self, report: BrowserReport, leg: LegLike, at: datetime) -> MetricSample | None:
        name = leg.leg_id + BROWSER_SUFFIX
        with self._lock:
            last = self._last_second.get(name)
            if last is not None and at <= last:
                # Two page samples rounded into one second (timer drift): the store keeps
                # one per leg per second, so the later one takes the next second.
                at = last + timedelta(seconds=1)
                if (at - self._clock()).total_seconds() > 2:
                    return None
            self._last_second[name] = at
        v = report.values
        sample = MetricSample(
            at=at, room=leg.room, call_id=leg.call_id, participant=leg.participant, leg=name,
            direction="publish" if leg.direction == "publish" else "subscribe", kind="video",
            source="browser",
            bitrate_in_kbps=_f(v, "bitrate_in_kbps"), bitrate_out_kbps=_f(v, "bitrate_out_kbps"),
            rtt_ms=_f(v, "rtt_ms"), loss_fraction=_f(v, "loss_fraction"),
            jitter_ms=_f(v, "jitter_ms"), fps=_f(v, "fps"), width=_i(v, "width"),
            height=_i(v, "height"), freeze_count=_i(v, "freeze_count"),
            freeze_s=_f(v, "freeze_s"), jitter_buffer_ms=_f(v, "jitter_buffer_ms"),
            concealed_pct=_f(v, "concealed_pct"), decode_ms=_f(v, "decode_ms"),
            frames_dropped=_i(v, "frames_dropped"),
            available_out_kbps=_f(v, "available_out_kbps"),
        )
        with self._lock:
            self._last[name] = (at, sample)
        return sample

    def latest(self, room: str, *, within_s: float = 10.0) -> dict[str, MetricSample]:
        """Newest browser sample per browser leg of `room`, if it is recent: a page that
        stopped reporting has no entry ("no browser data"), never zeros."""
        now = self._clock()
        with self._lock:
            return {leg: s for leg, (at, s) in self._last.items()
                    if s.room == room and (now - at).total_seconds() <= within_s}


def _f(values: Mapping[str, float | int | None], name: str) -> float | None:
    v = values.get(name)
    return None if v is None else float(v)


def _i(values: Mapping[str, float | int | None], name: str) -> int | None:
    v = values.get(name)
    return None if v is None else int(v)


def _key_owner(key: str) -> str | None:
    """The participant id prefix a streamer key names (`pub-<id>-<n>`, `sub-<id>-<slot>-<n>`)."""
    parts = key.split("-")
    return parts[1] if len(parts) >= 3 and parts[0] in ("pub", "sub") else None


def server_leg(browser_leg: str) -> str:
    """`abc:pub@browser` -> `abc:pub`: the server's leg a browser leg is the other end of."""
    return browser_leg.removesuffix(BROWSER_SUFFIX)


def is_browser_leg(leg: str) -> bool:
    return leg.endswith(BROWSER_SUFFIX)


__all__ = ["BROWSER_SUFFIX", "MAX_BODY_BYTES", "BrowserBatch", "BrowserReport", "BrowserStats",
           "Reply", "is_browser_leg", "server_leg"]
