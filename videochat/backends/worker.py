"""A background worker: one daemon thread repeating a round, with backoff while a backend is down.

Rounds start every `interval_s` (0: as soon as the last one ended, for rounds that block on
their own, like a stream read). A round that raises one of `backend_errors` waits
`min_backoff_s`, doubling up to `max_backoff_s` until a round succeeds; any other exception is
logged with its traceback and waited out for `error_pause_s`, so one bad round never ends the
worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Self

logger = logging.getLogger(__name__)


class BackgroundWorker:
    """Subclasses implement `run_round()`; `start()` / `stop()` run it in a daemon thread."""

    def __init__(
        self,
        *,
        thread_name: str,
        label: str,
        backend_errors: tuple[type[BaseException], ...],
        join_timeout_s: float,
        interval_s: float = 0.0,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        error_pause_s: float = 1.0,
    ) -> None:
        self.thread_name = thread_name
        self.label = label  # what the logs call it, e.g. "fault consumer on node-1"
        self.backend_errors = backend_errors
        self.join_timeout_s = join_timeout_s
        self.interval_s = interval_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.error_pause_s = error_pause_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the worker's own thread drives it (False when a caller runs rounds itself)."""
        return self._thread is not None

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                            daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the thread to end after its round, without waiting (stop several at once)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)
            self._thread = None

    def run_round(self) -> None:
        raise NotImplementedError

    def on_backend_error(self, exc: BaseException) -> None:
        """Called after a round failed on a backend error, before the backoff wait."""
        logger.warning("%s: backend unavailable (%s); retrying", self.label, exc)

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_round()
                backoff = self.min_backoff_s
                if self.interval_s > 0:
                    self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            except self.backend_errors as exc:
                self.on_backend_error(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad round
                logger.exception("%s: round failed", self.label)
                self._stop.wait(self.error_pause_s)
