"""Whether a QA run is still going, and the app's boots, for runs that span a restart (issue 17).

A run's document in `qa_runs` is written when it starts (`status: running`) and replaced by its
report when it ends. Two ways a restart of the app fails a run cleanly, with a reason:
- the runner watches the app's boot ids (`vc:app:boots`, one per node, written by each new app
  process): a boot it did not cause itself (an `app_restart` step) ends the run with
  "app restarted during run";
- at start-up the app marks the runs still "running" whose runner process is gone on this host
  (it died with the app, or was killed) as failed with the same reason.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pymongo.errors
import redis
from pymongo.database import Database

from videochat.backends import keys
from videochat.backends.embedded import pid_alive

logger = logging.getLogger(__name__)

RUNNING = "running"
FAILED = "failed"
APP_RESTARTED = "app restarted during run"


def runner_identity() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def mark_running(db: Database[Any], run_id: str) -> None:
    """After the run's provisional document is stored: it is in progress, by this process."""
    db[keys.QA_RUNS].update_one({"_id": run_id},
                                {"$set": {"status": RUNNING, "runner": runner_identity()}})


def fail_interrupted(db: Database[Any], *, alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Mark runs left "running" by a runner that is gone as failed; returns their ids. A live
    runner is left alone: it fails its run itself when it sees the app boot again."""
    host = socket.gethostname()
    failed = []
    try:
        for doc in db[keys.QA_RUNS].find({"status": RUNNING}, {"runner": 1}):
            runner = doc.get("runner") or {}
            pid = runner.get("pid")
            if runner.get("host") != host or (isinstance(pid, int) and alive(pid)):
                continue
            done = db[keys.QA_RUNS].update_one(
                {"_id": doc["_id"], "status": RUNNING},
                {"$set": {"status": FAILED, "passed": False, "error": APP_RESTARTED}})
            if done.modified_count:
                failed.append(str(doc["_id"]))
    except pymongo.errors.PyMongoError as exc:
        logger.warning("could not close the QA runs of the previous process: %s", exc)
    if failed:
        logger.warning("QA run(s) %s failed: %s", ", ".join(failed), APP_RESTARTED)
    return failed


def record_boot(client: redis.Redis, node: str) -> str:
    """A new app process on `node`; returns its boot id."""
    boot = uuid.uuid4().hex[:12]
    client.hset(keys.APP_BOOTS, node, boot)
    return boot


def boots(client: redis.Redis) -> dict[str, str]:
    raw: dict[str, str] = client.hgetall(keys.APP_BOOTS)  # type: ignore[assignment]
    return dict(raw)


def restarted(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Nodes that booted again (a new id for a node known before)."""
    return sorted(n for n, b in now.items() if n in before and before[n] != b)
