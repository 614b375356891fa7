"""The app process restarted as a deploy (SIGTERM) and as a crash (SIGKILL), no browser: it stops
gracefully, and the next process adopts the same embedded servers (issue 17)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from videochat.backends.embedded import EmbeddedServers, free_port, pid_alive
from videochat.qa.harness import AppProcess, HarnessError


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
