"""The app process restarted as a deploy (SIGTERM) and as a crash (SIGKILL), no browser: it stops
gracefully, and the next process adopts the same embedded servers (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from videochat.backends.embedded import EmbeddedServers, free_port, pid_alive
from videochat.qa.harness import CHROMIUM, PROJECT_ROOT, AppProcess, HarnessError, netns_available


def _servers(state: Path) -> dict[str, dict[str, object]]:
    try:
        known = json.loads((state / "servers.json").read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _wait_runtime(app: AppProcess, owner: int, timeout: float = 60.0) -> dict[str, int]:
    """Pids of the servers once the app's start-up hook has built its runtime (and owns them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        known = _servers(app.state_dir)
        owners = {e.get("owner") for e in known.values()}
        if len(known) == 2 and owners == {owner} and "graceful stop" not in app.log_tail(3) \
                and app.log_tail(200).count("chat service started") >= 1:
            return {n: int(e["pid"]) for n, e in known.items()}  # type: ignore[call-overload]
        time.sleep(0.2)
    raise AssertionError("the app did not build its runtime:\n" + app.log_tail())


@pytest.mark.slow
def test_restarts_keep_the_embedded_servers_and_a_graceful_stop_flushes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = AppProcess(state, port=free_port(), env={"VIDEOCHAT_HANDOVER_S": "30"})
    app.start()
    try:
        assert app.proc is not None
        first = _wait_runtime(app, app.proc.pid)
        # Streamlit's server loop, which the media shares, is uvloop (requirements.txt): the
        # capacity figures of docs/TESTING.md are measured on it.
        with urllib.request.urlopen(f"{app.url}/_vc/boot", timeout=10) as reply:
            assert json.loads(reply.read())["loop"] == "uvloop"

        app.restart("graceful")
        log = app.log_path.read_text()
        assert "shutdown: metrics done" in log and "shutdown: chat done" in log
        assert "embedded redis, mongo handed over" in log
        assert "graceful stop done" in log and "INCOMPLETE" not in log
        # The new process adopted the handed-over servers: same processes, same data.
        assert _wait_runtime(app, app.proc.pid) == first

        app.restart("kill")  # a crash: no handover, the owner is simply gone
        assert _wait_runtime(app, app.proc.pid) == first
        assert all(pid_alive(p) for p in first.values())

        with pytest.raises(HarnessError, match="restart mode 'reboot'"):
            app.restart("reboot")
    finally:
        app.stop()
    # Handed over again (30 s); nobody comes: a clean stop of whoever adopts leaves no orphan.
    servers = EmbeddedServers(state)
    assert {e.pid for e in servers.ensure(redis=True, mongo=True).values()} == set(first.values())
    servers.release()
    assert not any(pid_alive(p) for p in first.values())


def test_video_back_is_counted_from_the_new_process_answering() -> None:
    from videochat.qa.assertions import RunMeasurements, evaluate
    from videochat.qa.measurements import video_back_after_restarts
    from videochat.qa.scenario import find_scenario

    before = [100.0 + i * 0.05 for i in range(20)]  # frames up to the restart
    progress = {"alice": before + [110.0, 110.1, 110.2, 110.3],
                "bob": before + [111.0, 111.5, 112.5]}
    back = video_back_after_restarts(progress, [("kill at 8 s", 108.0)])
    assert back == {"kill at 8 s": 4.5}  # the slower browser's third new frame
    never = video_back_after_restarts({"alice": before}, [("kill at 8 s", 108.0)])
    assert never == {"kill at 8 s": None}

    objectives = find_scenario("server-restart").assertions
    (ok,) = evaluate(objectives, RunMeasurements(video_back_s=back))
    assert ok.passed and ok.measured == 4.5
    (failed,) = evaluate(objectives, RunMeasurements(video_back_s=never))
    assert not failed.passed and "video never came back after: kill at 8 s" in failed.detail
    (unmeasured,) = evaluate(objectives, RunMeasurements())
    assert not unmeasured.passed and "not measured" in unmeasured.detail


MECHANICS = """\
name = "restart-mechanics"
description = "two restarts of the app under a bot call"
duration_s = 10

[[participants]]
name = "bot1"
kind = "bot"

[[participants]]
name = "bot2"
kind = "bot"

[[timeline]]
at_s = 1
kind = "app_restart"
mode = "kill"

[[timeline]]
at_s = 5
kind = "app_restart"
mode = "graceful"

[assertions]
video_back_within_s = 5
"""


def _run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "videochat", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_a_run_against_a_given_app_refuses_app_restart(tmp_path: Path) -> None:
    scenario = tmp_path / "restart.toml"
    scenario.write_text(MECHANICS)
    report = tmp_path / "r.json"
    out = _run_cli("qa", "run", str(scenario), "--app-url", "http://127.0.0.1:9",
                   "--no-store", "--report", str(report), timeout=60)
    assert out.returncode == 1
    assert "run without --app-url" in json.loads(report.read_text())["error"]


@pytest.mark.browser
@pytest.mark.slow
def test_the_runner_restarts_its_app_and_the_run_goes_on(tmp_path: Path) -> None:
    if not (CHROMIUM.exists() and netns_available()):
        if os.environ.get("CI"):
            pytest.fail("browser stack missing (chromium, root, iproute2)")
        pytest.skip("browser stack missing (chromium, root, iproute2)")
    scenario = tmp_path / "restart.toml"
    scenario.write_text(MECHANICS)
    report = tmp_path / "r.json"
    out = _run_cli("qa", "run", str(scenario), "--report", str(report),
                   "--app-state", str(tmp_path / "state"), "--port", "8618", timeout=240)
    print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
    doc = json.loads(report.read_text())
    # Both restarts performed, neither taken for an unexpected one: no run error.
    assert doc["error"] is None, doc["error"]
    assert "app_restart (kill)" in out.stdout and "app_restart (graceful)" in out.stdout
    assert out.stdout.count("the new one answers its health check") == 2
    # Bots do not watch frames: the objective is reported as not measured, not passed.
    (back,) = doc["assertions"]
    assert back["name"] == "video_back_within_s" and not back["passed"]
    log = (tmp_path / "state" / "app.log").read_text()
    assert log.count("adopting embedded redis") == 2  # after the kill and after the handover
