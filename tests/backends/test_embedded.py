from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from videochat.backends.embedded import EmbeddedServers, pid_alive, pid_stopped
from videochat.backends.services import Services, redis_client
from videochat.settings import Settings


@pytest.mark.slow
def test_embedded_servers_start_persist_and_are_shared(state_dir: Path) -> None:
    settings = Settings.from_mapping({"VIDEOCHAT_STATE_DIR": str(state_dir)})
    first = Services.from_settings(settings)
    try:
        first.redis.set("k", "v")
        first.db.things.insert_one({"_id": 1, "x": "persisted"})
        assert {s.name: s.up for s in first.status()} == {"Redis": True, "MongoDB": True}
        assert all(s.source == "embedded" for s in first.status())

        # Another process from the same folder reuses the same servers instead of starting new ones.
        mapping = {"VIDEOCHAT_STATE_DIR": str(state_dir)}
        code = (
            "from videochat.backends.services import Services;"
            "from videochat.settings import Settings;"
            f"s=Services.from_settings(Settings.from_mapping({mapping!r}));"
            "print(s.redis.get('k'), s.db.things.find_one({'_id': 1})['x'], s.redis_url)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        assert out == ["v", "persisted", first.redis_url]
    finally:
        assert first.embedded is not None
        pids = [v["pid"] for v in json.loads((state_dir / "servers.json").read_text()).values()]
        first.close()
        first.embedded.stop_owned()
    assert not any(pid_alive(p) for p in pids)

    # Restart from the same folder: the data is still there.
    again = Services.from_settings(settings)
    try:
        assert again.redis.get("k") == "v"
        assert again.db.things.find_one({"_id": 1})["x"] == "persisted"
    finally:
        again.close()
        assert again.embedded is not None
        again.embedded.stop_owned()


def test_dead_server_in_discovery_file_is_replaced(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "servers.json").write_text(json.dumps({"redis": {"pid": 999_999, "port": 1}}))
    servers = EmbeddedServers(state_dir)
    try:
        found = servers.ensure(redis=True, mongo=False)
        assert found["redis"].owned
        assert found["redis"].pid != 999_999
    finally:
        servers.stop_owned()


def test_running_reads_the_discovery_file(tmp_path: Path) -> None:
    import json
    import os

    from videochat.backends.embedded import EmbeddedServers

    servers = EmbeddedServers(tmp_path)
    assert servers.running() is False  # nothing started here yet
    (tmp_path / "servers.json").write_text(json.dumps(
        {"redis": {"pid": os.getpid(), "port": 1}, "mongo": {"pid": os.getpid(), "port": 2}}))
    assert servers.running() is True
    (tmp_path / "servers.json").write_text(json.dumps(
        {"redis": {"pid": os.getpid(), "port": 1}, "mongo": {"pid": 2**22 + 12345, "port": 2}}))
    assert servers.running() is False


# --- adoption and handover (issue 17) -----------------------------------------------------------

OWNER = """
import json, sys, time
from pathlib import Path
from videochat.backends.embedded import EmbeddedServers
servers = EmbeddedServers(Path(sys.argv[1]))
found = servers.ensure(redis=True, mongo=sys.argv[2] == "both")
print(json.dumps({n: [e.pid, e.url] for n, e in found.items()}), flush=True)
if sys.argv[3] == "handover":
    servers.release(handover_s=float(sys.argv[4]))
else:
    time.sleep(600)
"""


def _owner(state_dir: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, list[Any]]]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(state_dir), *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the owner process printed nothing"
    return proc, json.loads(line)


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _pids(found: dict[str, list[Any]]) -> list[int]:
    return [int(pid) for pid, _url in found.values()]


@pytest.mark.slow
def test_a_start_after_the_owner_was_killed_adopts_its_servers(state_dir: Path) -> None:
    owner, first = _owner(state_dir, "both", "stay")
    try:
        redis_client(first["redis"][1]).set("k", "before the crash")
        owner.send_signal(signal.SIGKILL)  # the crash; the owner stays a zombie until waited
        _wait_until(lambda: not pid_alive(owner.pid), 10, "the owner to die (a zombie)")
        assert owner.returncode is None  # not reaped: a zombie, which counts as dead
        servers = EmbeddedServers(state_dir)
        found = servers.ensure(redis=True, mongo=True)
        # The same processes, ports and data: adopted, not a second copy beside them.
        assert {n: [e.pid, e.url] for n, e in found.items()} == first
        assert all(e.owned and e.adopted for e in found.values())
        assert redis_client(found["redis"].url).get("k") == "before the crash"
        known = json.loads((state_dir / "servers.json").read_text())
        assert {e["owner"] for e in known.values()} == {os.getpid()}
    finally:
        owner.kill()
        owner.wait()
    # The adopter's clean stop stops them: no orphan.
    servers.release()
    assert not any(pid_alive(p) for p in _pids(first))
    assert json.loads((state_dir / "servers.json").read_text()) == {}


@pytest.mark.slow
def test_handed_over_servers_wait_for_the_next_app_then_stop_when_nobody_adopts(
        state_dir: Path) -> None:
    # A deploy: the old app hands over on its graceful stop, the new one adopts.
    owner, first = _owner(state_dir, "both", "handover", "3")
    assert owner.wait(30) == 0
    assert all(pid_alive(p) for p in _pids(first))
    servers = EmbeddedServers(state_dir)
    found = servers.ensure(redis=True, mongo=True)
    assert {n: [e.pid, e.url] for n, e in found.items()} == first
    assert all(e.adopted for e in found.values())
    time.sleep(4.5)  # past the first grace: its watcher saw the adoption and left them running
    assert all(pid_alive(p) for p in _pids(first))

    # A plain stop of the new app with nobody after it: stopped once the grace has passed.
    servers.release(handover_s=1.0)
    assert all(pid_alive(p) for p in _pids(first))
    _wait_until(lambda: not any(pid_alive(p) for p in _pids(first)), 30,
                "the watcher to stop the servers")
    _wait_until(lambda: json.loads((state_dir / "servers.json").read_text()) == {}, 5,
                "the watcher to clear the discovery file")


def test_a_handed_over_server_in_use_is_kept_until_its_user_exits(state_dir: Path) -> None:
    servers = EmbeddedServers(state_dir)
    found = servers.ensure(redis=True, mongo=False)
    user = subprocess.Popen([sys.executable, "-c", OWNER, str(state_dir), "redis", "stay"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout is not None
        assert json.loads(user.stdout.readline())["redis"][0] == found["redis"].pid
        servers.release(handover_s=0.5)
        time.sleep(2.0)  # four times the grace: the user process still needs it
        assert pid_alive(found["redis"].pid)
    finally:
        user.kill()
        user.wait()
    _wait_until(lambda: not pid_alive(found["redis"].pid), 30,
                "the server to stop once its last user is gone")


def test_two_starts_at_once_share_one_server(state_dir: Path) -> None:
    procs = [_owner(state_dir, "redis", "stay") for _ in range(2)]
    try:
        pids = {found["redis"][0] for _proc, found in procs}
        assert len(pids) == 1
        server = pids.pop()
    finally:
        for proc, _found in procs:
            proc.kill()
            proc.wait()
    # Both users died without a clean stop; the next start adopts, and its stop ends it.
    servers = EmbeddedServers(state_dir)
    assert servers.ensure(redis=True, mongo=False)["redis"].pid == server
    servers.release()
    assert not pid_alive(server)


def test_a_server_left_stopped_by_an_outage_fault_is_resumed_and_adopted(
        state_dir: Path) -> None:
    owner, first = _owner(state_dir, "redis", "stay")
    pid = first["redis"][0]
    try:
        os.kill(pid, signal.SIGSTOP)  # what a redis_outage does, then the app crashes
        _wait_until(lambda: pid_stopped(pid), 10, "the server to stop")
        owner.kill()
        owner.wait()
        servers = EmbeddedServers(state_dir)
        found = servers.ensure(redis=True, mongo=False)
        assert found["redis"].pid == pid and found["redis"].adopted
        assert redis_client(found["redis"].url).ping()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    servers.release()
    assert not pid_alive(pid)


def test_a_dead_server_is_restarted_on_its_old_port_when_free(state_dir: Path) -> None:
    servers = EmbeddedServers(state_dir)
    first = servers.ensure(redis=True, mongo=False)["redis"]
    os.kill(first.pid, signal.SIGKILL)
    _wait_until(lambda: not pid_alive(first.pid), 10, "the server to die")
    again = EmbeddedServers(state_dir)
    second = again.ensure(redis=True, mongo=False)["redis"]
    try:
        assert second.pid != first.pid and second.url == first.url
    finally:
        again.release()
        servers.release()


def test_zombies_are_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    _wait_until(lambda: not pid_alive(proc.pid), 10, "the child to exit")  # not yet reaped
    assert proc.poll() == 0
