"""Both ends measured: a two-person call under a 20 % loss fault, then what each person's page
reported (freezes, jitter-buffer delay) read back from MongoDB and in the call's HTML report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_for
from videochat.qa.harness import PROJECT_ROOT, AppProcess, NetNamespace, first_progress_after

pytestmark = [pytest.mark.browser]


def videochat_cli(netns: NetNamespace, app: AppProcess, *args: str) -> str:
    """`python -m videochat ...` inside the namespace, on the app's own backends."""
    env = dict(os.environ, VIDEOCHAT_STATE_DIR=str(app.state_dir))
    out = subprocess.run(netns.prefix() + [sys.executable, "-m", "videochat", *args],
                         env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(args)}: {out.stderr or out.stdout}"
    return out.stdout


def stats_posts(page: Any) -> list[Any]:
    return [s for _, s in page.evaluate("window.__vcStatsLog || []")]


def test_both_pages_report_freezes_and_jitter_buffer_under_loss(
        netns: NetNamespace, app: AppProcess, open_page: Callable[[str], Any], room_name: str,
        tmp_path: Path) -> None:
    ana = open_page(f"/call?room={room_name}&name=ana&join=1")
    time.sleep(1)
    bob = open_page(f"/call?room={room_name}&name=bob&join=1")
    wait_for(lambda: all(first_progress_after(p, time.time() - 1.5, 5) for p in (ana, bob)),
             40, "both participants receiving moving video")
    videochat_cli(netns, app, "faults", "inject", "--room", room_name, "--kind", "loss",
                  "--percent", "20", "--duration", "12")
    time.sleep(14)
    # Each page posted its batches over the offer route and had them accepted.
    for page in (ana, bob):
        posts = stats_posts(page)
        assert posts and all(s == 200 for s in posts), posts
    out = tmp_path / "call.html"
    kpis = json.loads(videochat_cli(netns, app, "qa", "call-report", "--room", room_name,
                                    "--out", str(out)).strip().splitlines()[-1])
    seen = {e["participant"]: e for e in kpis["experiences"]}
    print("browser-reported under 20 % loss:", json.dumps(seen, indent=1))
    assert set(seen) == {"ana", "bob"}
    for who, e in seen.items():
        assert e["browser_data"], f"{who}: no browser data"
        assert e["freeze_count"] is not None and e["freeze_s"] is not None, who
        assert e["jitter_buffer_ms"] is not None and e["jitter_buffer_ms"] > 0, who
    report = out.read_text(encoding="utf-8")
    assert "Video frozen (browser, cumulative)" in report
    assert "Jitter-buffer delay (browser)" in report
    assert "no browser data" not in report
    for who in ("ana", "bob"):
        assert f"<tr><td>{who}</td>" in report
    assert "loss 20% on the room" in report
