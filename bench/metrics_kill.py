"""Metric samples lost when the app is killed (SIGKILL): the bound docs/OPERATIONS.md states.

A child process records 1 Hz samples for `--legs` legs through a real `MetricsStore` into an
embedded SecantusDB (started here, on loopback), as the app's sampler does, and prints how many
it has recorded; it is SIGKILLed at a random instant 5-8 s in. Lost = recorded - stored, in
seconds per leg. Nothing is flushed on a kill: what the flusher had not yet written (it wakes
every 0.5 s) and a write in flight are lost.

    python bench/metrics_kill.py               # 10 trials
    python bench/metrics_kill.py --trials 3

Writes bench/results/metrics_kill.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import summary, write  # noqa: E402
from videochat.backends.embedded import SecantusProcess  # noqa: E402
from videochat.backends.services import mongo_client  # noqa: E402

CHILD = """
import sys, time
from datetime import UTC, datetime
from videochat.backends.services import mongo_client
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import MetricsStore
store = MetricsStore(mongo_client(sys.argv[1])[sys.argv[2]])
legs, n = int(sys.argv[3]), 0
while True:
    at = datetime.now(UTC)
    for leg in range(legs):
        store.record(MetricSample(at=at, room="r", call_id="c", participant="p", leg=f"L{leg}",
                                  direction="publish", kind="video", fps=15.0))
        n += 1
    print(n, flush=True)
    time.sleep(1.0 - time.time() % 1.0)
"""


def trial(url: str, legs: int) -> float:
    name = "kill_" + uuid.uuid4().hex[:8]
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, name, str(legs)], cwd=root,
                             stdout=subprocess.PIPE, text=True)
    time.sleep(5 + random.random() * 3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.stdout is not None
    printed = child.stdout.read().split()
    recorded = int(printed[-1]) if printed else 0
    client = mongo_client(url)
    stored = sum(int(d["n"]) for d in client[name].samples.find({}, {"n": 1}))
    client.drop_database(name)
    client.close()
    return (recorded - stored) / legs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--legs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        server = SecantusProcess(Path(tmp))
        server.start()
        try:
            lost = [trial(server.url, args.legs) for _ in range(args.trials)]
        finally:
            server.stop()
    stats = summary(lost)
    path = write("metrics_kill", {"trials": args.trials, "legs": args.legs,
                                  "lost_s_per_leg": lost, "summary": stats})
    print(f"metrics lost at SIGKILL: median {stats['median']:.1f} s, max {stats['max']:.1f} s "
          f"of samples per leg over {args.trials} kills ({path})")


if __name__ == "__main__":
    main()
