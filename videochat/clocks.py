"""The three clocks the code is handed (tests pass fakes), each with its own name.

* `Monotonic`: seconds on a monotonic clock (`time.monotonic`), for timeouts and backoff.
* `EpochClock`: seconds since the Unix epoch (`time.time`), for times other processes read.
* `WallClock`: an aware UTC datetime (`utcnow`), for documents and events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Monotonic = Callable[[], float]
EpochClock = Callable[[], float]
WallClock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
