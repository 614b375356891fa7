"""Who is in which room, in Redis, so that every app process and the command line can see it.

Layout: hash `vc:presence:{room}` (field = participant id, value = JSON {name, joined_at, node,
seen, call_id, call_started_at}) and set `vc:rooms`. The call fields let a restarted process
continue the same call when its participants come back (`videochat.call.seats`).
Entries whose `seen` is older than `stale_after_s` belong to a process that died without
saying goodbye and are ignored (and pruned).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from videochat.backends import keys

logger = logging.getLogger(__name__)

ROOMS_KEY = keys.PRESENCE_ROOMS


def presence_key(room: str) -> str:
    return keys.presence_key(room)


@dataclass(frozen=True)
class ParticipantInfo:
    participant_id: str
    name: str
    joined_at: float
    node: str
    seen: float
    call_id: str | None = None
    call_started_at: float | None = None


class Presence:
    def __init__(
        self,
        client: redis.Redis,
        node: str = "",
        clock: Callable[[], float] = time.time,
        stale_after_s: float = 60.0,
    ) -> None:
        self.redis = client
        self.node = node
        self.clock = clock
        self.stale_after_s = stale_after_s

    def join(self, room: str, participant_id: str, name: str, joined_at: float,
             call_id: str | None = None, call_started_at: float | None = None) -> None:
        value = {"name": name, "joined_at": joined_at, "node": self.node, "seen": self.clock(),
                 "call_id": call_id, "call_started_at": call_started_at}
        pipe = self.redis.pipeline()
        pipe.hset(presence_key(room), participant_id, json.dumps(value))
        pipe.sadd(ROOMS_KEY, room)
        pipe.execute()

    def touch(self, room: str, participant_id: str, name: str, joined_at: float,
              call_id: str | None = None, call_started_at: float | None = None) -> None:
        self.join(room, participant_id, name, joined_at, call_id, call_started_at)

    def leave(self, room: str, participant_id: str) -> None:
        self.redis.hdel(presence_key(room), participant_id)
        if not self.redis.hlen(presence_key(room)):
            self.redis.srem(ROOMS_KEY, room)

    def participants(self, room: str) -> dict[str, ParticipantInfo]:
        raw: dict[str, str] = self.redis.hgetall(presence_key(room))  # type: ignore[assignment]
        now = self.clock()
        out: dict[str, ParticipantInfo] = {}
        stale = []
        for pid, value in raw.items():
            try:
                d = json.loads(value)
                started = d.get("call_started_at")
                info = ParticipantInfo(pid, str(d["name"]), float(d["joined_at"]),
                                       str(d.get("node", "")), float(d.get("seen", 0)),
                                       d.get("call_id") or None,
                                       None if started is None else float(started))
            except (ValueError, KeyError, TypeError):
                stale.append(pid)
                continue
            if now - info.seen > self.stale_after_s:
                stale.append(pid)
                continue
            out[pid] = info
        if stale:
            self.redis.hdel(presence_key(room), *stale)
        return out

    def rooms(self) -> list[str]:
        members: set[str] = self.redis.smembers(ROOMS_KEY)  # type: ignore[assignment]
        return sorted(r for r in members if self.participants(r))

    def find(self, room: str, name: str) -> ParticipantInfo | None:
        for info in self.participants(room).values():
            if info.name == name:
                return info
        return None
