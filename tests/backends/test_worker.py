"""The background-worker base: rounds repeat, backend errors back off, other errors pause."""

from __future__ import annotations

import threading

from videochat.backends.worker import BackgroundWorker


class Flaky(BackgroundWorker):
    def __init__(self, script: list[BaseException | None]) -> None:
        super().__init__(thread_name="flaky", label="flaky", backend_errors=(ConnectionError,),
                         join_timeout_s=2.0, min_backoff_s=0.01, max_backoff_s=0.02,
                         error_pause_s=0.01)
        self.script = script
        self.backend_errors_seen: list[BaseException] = []
        self.done = threading.Event()

    def run_round(self) -> None:
        if not self.script:
            self.done.set()
            self._stop.wait(0.01)
            return
        step = self.script.pop(0)
        if step is not None:
            raise step

    def on_backend_error(self, exc: BaseException) -> None:
        self.backend_errors_seen.append(exc)


def test_a_worker_outlives_backend_and_other_errors() -> None:
    worker = Flaky([ConnectionError("down"), ValueError("bug"), None, ConnectionError("again")])
    worker.start()
    worker.start()  # idempotent
    assert worker.running
    assert worker.done.wait(5.0)
    worker.stop()
    assert not worker.running
    assert [str(e) for e in worker.backend_errors_seen] == ["down", "again"]
