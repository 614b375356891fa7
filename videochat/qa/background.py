"""QA runs in the background for the /qa page: a subprocess per run, its progress in a file."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)



@dataclass
class BackgroundRun:
    """A `qa run` subprocess started for the /qa page; its progress lines go to `log`."""

    scenario: str
    room: str | None
    report: Path
    log: Path
    proc: Any
    started_at: float = field(default_factory=time.time)

    @property
    def returncode(self) -> int | None:
        code: int | None = self.proc.poll()
        return code

    @property
    def running(self) -> bool:
        return self.returncode is None

    def progress(self, lines: int = 40) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.startswith(("[", "  ", "error"))][-lines:]

    def report_doc(self) -> dict[str, Any] | None:
        import json

        try:
            doc: dict[str, Any] = json.loads(self.report.read_text())
            return doc
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()


def launch_run(scenario: str, *, app_url: str, state_dir: Path, reports_dir: Path,
               room: str | None = None) -> BackgroundRun:
    """Start `python -m videochat qa run` against a running app, in the background."""
    import subprocess
    import sys

    from videochat.qa.harness import PROJECT_ROOT

    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}-{scenario[:40]}"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    report, log = reports_dir / f"{stem}.json", reports_dir / f"{stem}.log"
    cmd = [sys.executable, "-m", "videochat", "qa", "run", scenario, "--report", str(report),
           "--app-url", app_url, "--state-dir", str(state_dir)]
    if room:
        cmd += ["--room", room]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    logger.info("QA run of %s started (pid %d), report %s", scenario, proc.pid, report)
    return BackgroundRun(scenario, room, report, log, proc)
