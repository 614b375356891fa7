"""One process's reader of a Redis command stream (fault commands, bot commands).

Commands are stream entries whose field ``cmd`` holds JSON. A reader starts at the stream's
end (commands sent before it existed are not its business: state is reconciled separately
where it matters), reads in batches with a blocking XREAD, and hands each command to
`handle_command` in order. Redis outages are retried with the worker's backoff.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from videochat.backends.worker import BackgroundWorker

logger = logging.getLogger(__name__)


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair ("1700000000000-3" -> (1700000000000, 3))."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class CommandStreamConsumer(BackgroundWorker):
    """Reads `stream` for one node; subclasses implement `handle_command` and `run_round`."""

    def __init__(self, client: redis.Redis, *, stream: str, node: str, label: str,
                 thread_name: str, block_ms: int = 1000, batch: int = 100) -> None:
        super().__init__(thread_name=thread_name, label=f"{label} on {node}",
                         backend_errors=(redis.RedisError,), join_timeout_s=block_ms / 1000 + 3)
        self.redis = client
        self.stream = stream
        self.node = node
        self.block_ms = block_ms
        self.batch = batch
        self.last_id: str | None = None

    def tail_id(self) -> str:
        """The id of the stream's newest entry ("0-0" for an empty stream)."""
        last: Any = self.redis.xrevrange(self.stream, count=1)
        return str(last[0][0]) if last else "0-0"

    def read(self, block_ms: int | None = None) -> int:
        """Hand every command after `last_id` to `handle_command`; returns how many."""
        assert self.last_id is not None
        block = self.block_ms if block_ms is None else block_ms
        reply: Any = self.redis.xread({self.stream: self.last_id}, count=self.batch,
                                      block=block or None)
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = str(entry_id)
                self.handle_command(str(entry_id), fields.get("cmd", ""))
                n += 1
        return n

    def handle_command(self, entry_id: str, raw: str) -> None:
        raise NotImplementedError

    def on_backend_error(self, exc: BaseException) -> None:
        logger.warning("%s: Redis unavailable (%s); retrying", self.label, exc)
