"""QA runs across an app restart (issue 17): a run left running by a runner that is gone is
failed with the reason at the app's start; a live runner sees the app boot again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import redis

from videochat.backends import keys
from videochat.qa import run_status


def test_runs_left_running_by_a_gone_runner_fail_with_the_reason(mongo_db: Any) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    runs = mongo_db[keys.QA_RUNS]
    host = socket.gethostname()
    runs.insert_many([
        {"_id": "gone", "passed": False, "error": "running", "status": "running",
         "runner": {"pid": int(dead.stdout), "host": host}},
        {"_id": "alive", "status": "running", "runner": {"pid": os.getpid(), "host": host}},
        {"_id": "elsewhere", "status": "running", "runner": {"pid": 1, "host": "other-host"}},
        {"_id": "finished", "passed": True, "runner": {"pid": int(dead.stdout), "host": host}},
    ])
    assert run_status.fail_interrupted(mongo_db) == ["gone"]
    gone = runs.find_one({"_id": "gone"})
    assert (gone["status"], gone["passed"], gone["error"]) == (
        "failed", False, "app restarted during run")
    assert runs.find_one({"_id": "alive"})["status"] == "running"  # fails itself
    assert runs.find_one({"_id": "finished"}).get("status") is None
    assert run_status.fail_interrupted(mongo_db) == []


def test_a_runner_tells_a_new_boot_of_a_known_node(redis_conn: redis.Redis) -> None:
    first = run_status.record_boot(redis_conn, "host:1")
    before = run_status.boots(redis_conn)
    assert before == {"host:1": first}
    run_status.record_boot(redis_conn, "host:2")  # a node that joined: not a restart
    assert run_status.restarted(before, run_status.boots(redis_conn)) == []
    run_status.record_boot(redis_conn, "host:1")
    assert run_status.restarted(before, run_status.boots(redis_conn)) == ["host:1"]


def test_a_restart_the_run_did_not_cause_fails_it_with_the_reason(
        redis_conn: redis.Redis, tmp_path: Any) -> None:
    from types import SimpleNamespace

    import pytest

    from videochat.qa.runner import RunError, RunOptions, ScenarioRun
    from videochat.qa.scenario import find_scenario

    run = ScenarioRun(find_scenario("blackout-8s"), RunOptions(state_dir=tmp_path, store=False))
    run_status.record_boot(redis_conn, "host:1")
    run._services = SimpleNamespace(redis=redis_conn)  # type: ignore[assignment]
    run._boots = run_status.boots(redis_conn)
    run._check_app()  # nothing happened
    run_status.record_boot(redis_conn, "host:1")  # somebody restarted the app
    with pytest.raises(RunError, match=r"app restarted during run \(t=.* node host:1"):
        run._check_app()
