"""Fakes shared by the tests (importable as `fakes`: pytest puts tests/ on the path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A monotonic clock the test moves by hand (`clock.t += 1`); `wall()` is the same instant
    as an aware datetime counted from `EPOCH`."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)
