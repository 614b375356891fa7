"""`python -m videochat faults …` as a subprocess, against the session's real Valkey/SecantusDB."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import redis_client
from videochat.call.presence import Presence
from videochat.faults.control import ACTIVE, FaultConsumer
from videochat.faults.injector import FaultManager

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(valkey_server: ValkeyProcess, secantus_server: SecantusProcess, redis_conn: redis.Redis,
        tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MONGODB_",
                                                                 "VIDEOCHAT_"))}
    e.update(REDIS_URL=valkey_server.url, MONGODB_URI=secantus_server.url,
             VIDEOCHAT_DB="t_cli", VIDEOCHAT_STATE_DIR=str(tmp_path / "state"),
             PYTHONPATH=str(REPO))
    return e


@pytest.fixture
def call(redis_conn: redis.Redis) -> None:
    presence = Presence(redis_conn)
    presence.join("r1", "p-a", "alice", time.time())
    presence.join("r1", "p-b", "bob", time.time())


def cli(env: dict[str, str], *args: str, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "videochat", *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=60)


def test_inject_list_clear(env: dict[str, str], call: None, redis_conn: redis.Redis) -> None:
    r = cli(env, "faults", "inject", "--room", "r1", "--participant", "alice", "--kind", "loss",
            "--percent", "20", "--duration", "12", "--direction", "up")
    assert r.returncode == 0, r.stderr
    assert "injected loss(direction=up, percent=20.0) on alice in room r1 for 12 s" in r.stdout
    assert "no app process is listening" in r.stdout
    [fid] = redis_conn.hkeys(ACTIVE)
    assert f"id {fid}" in r.stdout

    r = cli(env, "faults", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "KIND", "ROOM", "PARTICIPANT", "DIR", "PARAMS", "LEFT",
                                "APPLIED", "BY"]
    assert lines[1].split()[:6] == [fid, "loss", "r1", "alice", "up", "percent=20"]

    r = cli(env, "faults", "list", "--json")
    [row] = json.loads(r.stdout)
    assert row["id"] == fid and 5 < row["remaining_s"] <= 12 and row["until"] > row["since"]

    r = cli(env, "faults", "clear")
    assert r.returncode == 0 and f"cleared 1 fault(s): {fid}" in r.stdout
    assert cli(env, "faults", "list").stdout.strip() == "no active faults"


def test_every_kind_from_the_issue_is_accepted(env: dict[str, str], call: None,
                                               redis_conn: redis.Redis) -> None:
    for args in (["--kind", "blackout", "--duration", "8"],
                 ["--kind", "latency", "--ms", "300", "--jitter", "50"],
                 ["--kind", "bandwidth", "--kbps", "300"],
                 ["--kind", "kill"],
                 ["--kind", "freeze_video"],
                 ["--preset", "poor-3g"]):
        r = cli(env, "faults", "inject", "--room", "r1", "--participant", "bob", "--wait", "0",
                *args)
        assert r.returncode == 0, (args, r.stderr)
    kinds = sorted(json.loads(v)["fault"]["kind"] for v in redis_conn.hvals(ACTIVE))
    assert kinds == ["bandwidth", "bandwidth", "blackout", "freeze_video", "kill", "latency",
                     "latency", "loss"]
    r = cli(env, "faults", "clear", "--room", "elsewhere")
    assert "cleared 0 fault(s) in room 'elsewhere'" in r.stdout
    assert redis_conn.hlen(ACTIVE) == 8


def test_unknown_room_or_participant(env: dict[str, str], call: None) -> None:
    r = cli(env, "faults", "inject", "--room", "nowhere", "--kind", "kill")
    assert r.returncode == 3
    assert "unknown room 'nowhere'" in r.stderr and "r1" in r.stderr
    r = cli(env, "faults", "inject", "--room", "r1", "--participant", "carol", "--kind", "kill")
    assert r.returncode == 3
    assert "unknown participant 'carol' in room 'r1' (present: alice, bob)" in r.stderr
    r = cli(env, "faults", "inject", "--room", "nowhere", "--kind", "kill", "--force",
            "--wait", "0")
    assert r.returncode == 0
    r = cli(env, "faults", "stop", "nope")
    assert r.returncode == 3 and "no active fault with id 'nope'" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "loss"], "--percent: fault field 'percent' is invalid: is required"),
    (["--kind", "loss", "--percent", "300"], "--percent: fault percent 300.0 is invalid"),
    (["--kind", "loss", "--percent", "5", "--kbps", "10"], "--kbps: fault field 'kbps'"),
    (["--kind", "latency", "--ms", "-5"], "--ms: fault ms -5.0 is invalid"),
    (["--kind", "blackout", "--duration", "0"], "--duration: fault duration_s 0.0 is invalid"),
    (["--kind", "lose"], "invalid choice: 'lose'"),
    (["--preset", "poor-5g"], "invalid choice: 'poor-5g'"),
    (["--preset", "poor-3g", "--percent", "3"], "cannot be combined with --preset"),
    (["--kind", "mongo_outage", "--duration", "3"], "MONGODB_URI"),
])
def test_bad_arguments_exit_2_naming_the_value(env: dict[str, str], call: None,
                                                args: list[str], message: str) -> None:
    r = cli(env, "faults", "inject", "--room", "r1", *args)
    assert r.returncode == 2, r.stdout
    assert message in r.stderr


def test_room_is_required_except_for_backend_outages(env: dict[str, str]) -> None:
    r = cli(env, "faults", "inject", "--kind", "loss", "--percent", "5")
    assert r.returncode == 2 and "--room" in r.stderr


@pytest.fixture
def app_process(valkey_server: ValkeyProcess) -> Iterator[FaultManager]:
    """Stands for a running app: a FaultManager on its own loop fed by a consumer."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = FaultManager(loop, node="app1")
    consumer = FaultConsumer(redis_client(valkey_server.url), manager, block_ms=200)
    consumer.start()
    yield manager
    consumer.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(2)
    loop.close()


def test_a_running_app_applies_and_acknowledges(env: dict[str, str], call: None,
                                                app_process: FaultManager) -> None:
    time.sleep(0.3)  # the consumer's first heartbeat
    r = cli(env, "faults", "inject", "--room", "r1", "--participant", "bob", "--kind",
            "black_video", "--duration", "20")
    assert r.returncode == 0, r.stderr
    assert "app1: applied (0 media legs there)" in r.stdout
    assert app_process.video_effect("r1", "bob") == "black"
    r = cli(env, "faults", "list")
    assert "app1" in r.stdout
    assert cli(env, "faults", "clear", "--room", "r1").returncode == 0
    deadline = time.monotonic() + 3
    while app_process.active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app_process.video_effect("r1", "bob") is None


def test_embedded_servers_found_through_the_app_folder(
    env: dict[str, str], valkey_server: ValkeyProcess, secantus_server: SecantusProcess,
    call: None, tmp_path: Path, redis_conn: redis.Redis,
) -> None:
    """No URLs: the discovery file in the app's state folder leads to the running servers."""
    app = tmp_path / "app"
    state = app / ".videochat"
    state.mkdir(parents=True)
    (state / "servers.json").write_text(json.dumps({
        "redis": {"pid": valkey_server.pid, "port": valkey_server.port},
        "mongo": {"pid": secantus_server.pid, "port": secantus_server.port},
    }))
    bare = {k: v for k, v in env.items() if k not in ("REDIS_URL", "MONGODB_URI",
                                                       "VIDEOCHAT_STATE_DIR")}
    r = cli(bare, "faults", "inject", "--room", "r1", "--kind", "loss", "--percent", "5",
            "--wait", "0", cwd=app)
    assert r.returncode == 0, r.stderr
    assert redis_conn.hlen(ACTIVE) == 1


def test_no_running_app_or_backend_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k not in ("REDIS_URL", "MONGODB_URI")}
    r = cli(bare, "faults", "list", cwd=tmp_path)
    assert r.returncode == 4
    assert "no running embedded redis server found" in r.stderr and "start the app" in r.stderr
    dead = dict(env, REDIS_URL="redis://127.0.0.1:1/0")
    r = cli(dead, "faults", "list")
    assert r.returncode == 4 and "Redis cannot be reached" in r.stderr


def test_missing_plugin_command_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from videochat import cli as cli_module

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    cli_module._add_plugin(commands, "ghost", "videochat.no_such_plugin")
    args = parser.parse_args(["ghost", "anything"])
    assert args.func(args) == cli_module.EXIT_USAGE == 2
    assert "videochat.no_such_plugin does not provide" in capsys.readouterr().err


