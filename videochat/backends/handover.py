"""The watcher that keeps handed-over embedded servers alive for the next app, then stops them.

A graceful stop of the app (a deploy: stop, then start the new version) hands its Valkey and
SecantusDB over instead of stopping them (`EmbeddedServers.release(handover_s=…)`): restarting
SecantusDB alone takes 1-2 s and every client would reconnect to new ports. The app spawns this
small detached process, which stops the servers once nobody has used them for the grace period,
unless a new process adopted them first (it clears `handed_over_by` in the discovery file). So a
deploy keeps data, ports and time, and a plain stop leaves no orphan.

    python -m videochat.backends.handover STATE_DIR HANDED_OVER_BY_PID GRACE_S
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from videochat.backends.embedded import (
    live_users,
    locked,
    pid_serves,
    read_discovery,
    stop_pid,
    write_discovery,
)

logger = logging.getLogger(__name__)

POLL_S = 0.5
LOG_NAME = "handover.log"


def spawn_watcher(state_dir: Path, by: int, grace_s: float) -> subprocess.Popen[bytes]:
    """Start the watcher in its own session: it must outlive the app that starts it."""
    import videochat

    root = Path(videochat.__file__).resolve().parent.parent  # so `-m` finds the package
    with open(Path(state_dir) / LOG_NAME, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "videochat.backends.handover", str(state_dir), str(by),
             f"{grace_s:g}"],
            cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def watch(state_dir: Path, by: int, grace_s: float, *, poll_s: float = POLL_S) -> list[str]:
    """Wait until the servers handed over by `by` are adopted (returns []) or idle for
    `grace_s` (stops them, returns their names). Idle: no live process uses them."""
    state_dir = Path(state_dir)
    discovery, lock = state_dir / "servers.json", state_dir / "servers.lock"
    idle_since = time.monotonic()
    while True:
        time.sleep(poll_s)
        with locked(lock):
            known = read_discovery(discovery)
            mine = {n: e for n, e in known.items() if e.get("handed_over_by") == by}
            if not mine:
                logger.info("servers handed over by %d were adopted", by)
                return []
            if any(live_users(e, besides=by) for e in mine.values()):
                idle_since = time.monotonic()  # still in use (a QA runner, the command line)
                continue
            if time.monotonic() - idle_since < grace_s:
                continue
            for name, entry in mine.items():
                pid, port = entry.get("pid"), entry.get("port")
                logger.info("nobody adopted embedded %s (pid %s) in %.0f s: stopping it", name,
                            pid, grace_s)
                if isinstance(pid, int) and isinstance(port, int) and pid_serves(pid, port):
                    stop_pid(pid)
                del known[name]
            write_discovery(discovery, known)
            return list(mine)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s handover: %(message)s")
    state_dir, by, grace = Path(argv[0]), int(argv[1]), float(argv[2])
    logger.info("watching servers handed over by %d (grace %.0f s)", by, grace)
    watch(state_dir, by, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
