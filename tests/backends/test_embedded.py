from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from videochat.backends.embedded import EmbeddedServers, pid_alive
from videochat.backends.services import Services
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
