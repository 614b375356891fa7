"""QA sessions: scripted fault scenarios run against a live call, ending in a verdict and a report.

- `scenario.py`: the scenario schema (TOML, pydantic): participants, a timeline of fault steps
  (built on `videochat/faults/kinds.py`), chat traffic, recovery objectives.
- `runner.py`: one run: reach or start the app, join browsers and bots, inject the timeline's
  faults, send chat, collect what the call recorded, judge it.
- `assertions.py`: measurements from events and samples, and the verdict per objective.
- `report.py`: the JSON + HTML report and run history (`qa_runs` in MongoDB).
- `harness.py`: the real app and headless Chromium participants, isolated on loopback.
- `cli.py`: ``python -m videochat qa list | run``.

A run with a runner error (app did not start, a participant never joined) is still reported:
`RunResult(error=...)`, verdict failed, so CI and the /qa page show why.
"""

from __future__ import annotations

from videochat.qa.assertions import (
    AssertionResult,
    ChatLedger,
    FaultWindow,
    RunMeasurements,
    Sample,
    TimelineEvent,
    chat_ledger,
    evaluate,
    fault_windows_from_events,
    quality_times_from_events,
    reconnect_times_from_events,
    video_resumed_from_samples,
)
from videochat.qa.report import RunResult, RunStore, new_run_id, save_report

__all__ = [
    "AssertionResult", "ChatLedger", "FaultWindow", "RunMeasurements", "RunResult", "RunStore",
    "Sample", "TimelineEvent", "chat_ledger", "evaluate", "fault_windows_from_events",
    "new_run_id", "quality_times_from_events", "reconnect_times_from_events", "save_report",
    "video_resumed_from_samples",
]
