"""A participant's media right now, from the newest stored samples: the Faults page shows it
beside each active fault (cause beside effect).

Read from MongoDB, not from the sampler's memory: the page may run in another process than the
call's media. Per participant, over the last few seconds (`WITHIN_S`, the store writes twice a
second): what they send (the server's publish leg: bitrate and fps received from them, loss on
the way in) and what they receive (their page's own report where it sent one, else the server's
subscribe legs). The warm spare (a receiving leg with no frames) is left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from videochat.clocks import utcnow
from videochat.metrics.store import SAMPLES

WITHIN_S = 5.0
# How far back a leg's frames count towards "this leg is not the warm spare": a leg frozen by a
# fault from the first second of a new minute bucket has only zeros in that bucket, and must
# still show at 0 fps (before, it vanished, and the page said "no data" for the frozen one).
MOVED_LOOKBACK_S = 300.0


@dataclass(frozen=True)
class Flow:
    kbps: float | None
    fps: float | None
    loss: float | None
    by: str  # "server" or "page"

    def text(self) -> str:
        parts = ["–" if self.kbps is None else f"{self.kbps:.0f} kbps",
                 "–" if self.fps is None else f"{self.fps:.0f} fps",
                 "–" if self.loss is None else f"{self.loss:.0%} loss"]
        return " · ".join(parts)


@dataclass(frozen=True)
class LiveEffect:
    participant: str
    sends: Flow | None
    receives: Flow | None
    at: datetime

    def text(self) -> str:
        sends = "no data" if self.sends is None else self.sends.text()
        receives = "no data" if self.receives is None else (
            f"{self.receives.text()} ({self.receives.by})")
        return f"{self.participant} sends {sends} — receives {receives}"


def _latest(doc: dict[str, Any], since: datetime) -> dict[str, Any] | None:
    at0 = doc["at"] if doc["at"].tzinfo else doc["at"].replace(tzinfo=since.tzinfo)
    held = doc.get("p") or []
    for slot in range(len(held) - 1, -1, -1):
        at = at0 + timedelta(seconds=slot)
        if held[slot] and at >= since:
            return {"at": at, **{f: (doc.get(f) or [None] * 60)[slot]
                                 for f in ("bi", "bo", "fps", "lf")}}
    return None


def live_effects(db: Database[Any], room: str, participant: str | None = None, *,
                 now: datetime | None = None, within_s: float = WITHIN_S) -> list[LiveEffect]:
    """Per participant of `room` (or just `participant`) with a sample in the last
    `within_s`, what they send and receive now."""
    now = now or utcnow()
    since = now - timedelta(seconds=within_s)
    lookback = since - timedelta(seconds=MOVED_LOOKBACK_S)
    query: dict[str, Any] = {"meta.room": room,
                             "at": {"$gte": lookback.replace(second=0, microsecond=0)}}
    if participant is not None:
        query["meta.participant"] = participant
    legs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    # Frames at any time in the look-back: a leg frozen by the fault is shown at 0 fps, the
    # warm spare (no frames ever) is not shown at all.
    moved: set[tuple[str, str]] = set()
    for doc in db[SAMPLES].find(query, {"meta": 1, "at": 1, "p": 1, "bi": 1, "bo": 1,
                                        "fps": 1, "lf": 1}):
        meta = doc["meta"]
        if any(v for v in (doc.get("fps") or []) if v):
            moved.add((meta["participant"], meta["leg"]))
        got = _latest(doc, since)
        if got is not None:
            legs[meta["participant"]].append((meta, got))
    out = []
    for who, entries in sorted(legs.items()):
        newest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for meta, got in entries:  # a leg may span minute buckets: keep its newest
            have = newest.get(meta["leg"])
            if have is None or got["at"] > have[1]["at"]:
                newest[meta["leg"]] = (meta, {**got, "moved": (who, meta["leg"]) in moved})
        pub = [g for m, g in newest.values()
               if m.get("direction") == "publish" and m.get("source", "server") == "server"]
        sends = None if not pub else Flow(pub[0]["bi"], pub[0]["fps"], pub[0]["lf"], "server")
        receives = None
        for source, rate in (("browser", "bi"), ("server", "bo")):
            rx = [g for m, g in newest.values() if m.get("direction") == "subscribe"
                  and m.get("source", "server") == source and g["moved"]]
            if rx:
                losses = [g["lf"] for g in rx if g.get("lf") is not None]
                rates = [g[rate] for g in rx if g.get(rate) is not None]
                receives = Flow(
                    sum(rates) if rates else None,
                    min((g["fps"] for g in rx if g.get("fps") is not None), default=None),
                    max(losses) if losses else None,
                    "page" if source == "browser" else "server")
                break
        at = max(g["at"] for _, g in newest.values())
        out.append(LiveEffect(who, sends, receives, at))
    return out


__all__ = ["Flow", "LiveEffect", "live_effects"]
