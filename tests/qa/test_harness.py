"""Pure timing helpers of the QA harness (the browser parts run in tests/e2e)."""

from __future__ import annotations

from videochat.qa.harness import resumed_after_stall


def frames(start: float, end: float, fps: float = 20.0) -> list[float]:
    n = int((end - start) * fps)
    return [start + i / fps for i in range(n)]


def test_stragglers_after_a_kill_do_not_count_as_resumed() -> None:
    # Frames keep landing for 0.1 s after the kill at t=10, stop, and resume at t=12.5.
    times = frames(0, 10.1) + frames(12.5, 14)
    resumed = resumed_after_stall(times, 10.0)
    assert resumed is not None and abs(resumed - (12.5 + 2 / 20)) < 1e-9


def test_not_yet_resumed() -> None:
    assert resumed_after_stall(frames(0, 10.1), 10.0) is None
    assert resumed_after_stall(frames(0, 10.1) + [12.5, 12.55], 10.0) is None  # 2 of 3 frames


def test_a_view_that_never_stalled_counts_once_seen_for_20_s() -> None:
    assert resumed_after_stall(frames(0, 25), 4.0) is not None
    assert resumed_after_stall(frames(0, 15), 4.0) is None
