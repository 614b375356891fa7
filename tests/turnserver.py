"""A real coturn (`turnserver`, Debian package `coturn`) on loopback, for tests.

Not a conftest: import `CoturnProcess` (or `coturn_fixture`) where a test needs a TURN server.

    with CoturnProcess(tmp_path, secret="s3cret") as turn:
        turn.url            # "turn:127.0.0.1:PORT"
        turn.usage()        # traffic coturn accounted per session, parsed from its log

The server runs with `--use-auth-secret` (TURN REST API credentials), listens and relays on
127.0.0.1 only, allows loopback peers (otherwise it refuses to relay between two local clients),
and runs verbose so that allocations and their byte counters appear in its log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice import stun

TURNSERVER = "turnserver"
APT_HINT = "coturn is not installed: apt-get install -y coturn"

_USAGE_RE = re.compile(
    r"session (?P<session>\d+): (?P<peer>peer )?usage: "
    r"realm=<(?P<realm>[^>]*)>, username=<(?P<username>[^>]*)>, "
    r"rp=(?P<rp>\d+), rb=(?P<rb>\d+), sp=(?P<sp>\d+), sb=(?P<sb>\d+)"
)


@dataclass(frozen=True)
class SessionUsage:
    """One `usage:` line: packets/bytes coturn received (r) and sent (s).

    `peer=False`: on the client side of the allocation; `peer=True`: on its relayed side, i.e. the
    traffic coturn actually relayed to and from peers.
    """

    session: str
    peer: bool
    username: str
    rp: int
    rb: int
    sp: int
    sb: int


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


def stun_binding_ok(port: int, timeout: float = 0.3) -> bool:
    """One STUN Binding request over UDP: does something answer on the port?"""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(bytes(request), ("127.0.0.1", port))
            data, _ = sock.recvfrom(2048)
        except OSError:
            return False
    try:
        return stun.parse_message(data).transaction_id == request.transaction_id
    except ValueError:
        return False


class CoturnProcess:
    """A coturn child process on 127.0.0.1 with a REST shared secret."""

    def __init__(
        self,
        workdir: Path,
        secret: str = "videochat-test-secret",
        realm: str = "videochat.test",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        allow_loopback_peers: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.secret = secret
        self.realm = realm
        self.port = port or free_port()
        self.extra_args = extra_args
        self.allow_loopback_peers = allow_loopback_peers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "turnserver.log"

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    @property
    def tcp_url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=tcp"

    def command(self) -> list[str]:
        exe = shutil.which(TURNSERVER)
        if exe is None:
            raise RuntimeError(APT_HINT)
        return [
            exe,
            "-n",  # no config file: /etc/turnserver.conf must not leak into tests
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}",
            "--use-auth-secret",
            f"--static-auth-secret={self.secret}",
            f"--realm={self.realm}",
            "--no-tls",
            "--no-dtls",
            *(["--allow-loopback-peers"] if self.allow_loopback_peers else []),
            "--no-cli",
            "--no-multicast-peers",
            "--verbose",
            "--log-file=stdout",
            "--simple-log",
            f"--userdb={self.workdir / 'turndb'}",
            f"--pidfile={self.workdir / 'turnserver.pid'}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"turnserver exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}"
                )
            if stun_binding_ok(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"turnserver did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def usage(self) -> list[SessionUsage]:
        """Every `usage:` line so far (one per refresh and one when a session ends)."""
        return [
            SessionUsage(m["session"], bool(m["peer"]), m["username"],
                         int(m["rp"]), int(m["rb"]), int(m["sp"]), int(m["sb"]))
            for m in _USAGE_RE.finditer(self.log_text())
        ]

    def final_usage(self, peer: bool = False) -> dict[str, SessionUsage]:
        """Last (client-side or peer-side) usage line per session: its totals so far."""
        out: dict[str, SessionUsage] = {}
        for u in self.usage():
            if u.peer == peer:
                out[u.session] = u
        return out

    def __enter__(self) -> CoturnProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_coturn() -> None:
    """Fail (not skip) when coturn is missing: a skipped TURN test would prove nothing."""
    if shutil.which(TURNSERVER) is None:
        pytest.fail(APT_HINT)


def coturn_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoturnProcess]:
    """Body for a module- or session-scoped fixture: `yield from coturn_fixture(factory)`."""
    require_coturn()
    server = CoturnProcess(tmp_path_factory.mktemp("coturn"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
