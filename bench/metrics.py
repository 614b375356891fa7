"""Metrics benchmark: sample ingest rate, and query + figure time for 1 h x 10 participants.

Backend: embedded SecantusDB (started here in a temporary folder, on loopback).

1. Ingest: one hour of 1 Hz samples for 10 participants, each with a publish and a subscribe leg
   (72,000 samples), pushed through `MetricsStore.record()` and timed until `flush()` returns,
   i.e. until MongoDB acknowledged every bucket. Repeated on fresh databases; median reported.
2. Dashboard: for that hour, the dashboard's work: `query_samples` (downsampled in the
   database), `query_events`, `compute_kpis` and `build_figures` (5 plotly charts), plus the
   JSON serialisation Streamlit does for `st.plotly_chart`. Reported as median / p95 / p99.

    python bench/metrics.py                 # full run
    python bench/metrics.py --runs 1 --queries 3    # short run

Writes bench/results/metrics.json and prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videochat.backends.embedded import SecantusProcess  # noqa: E402
from videochat.backends.services import mongo_client  # noqa: E402
from videochat.events import CallEvent  # noqa: E402
from videochat.metrics.diagnostics import (  # noqa: E402
    Selection,
    build_figures,
    compute_kpis,
    query_events,
    query_samples,
)
from videochat.metrics.stats import MetricSample  # noqa: E402
from videochat.metrics.store import MetricsStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def make_samples(room: str, participants: int, seconds: int, legs: tuple[str, ...]
                 ) -> list[MetricSample]:
    out = []
    for i in range(seconds):
        at = T0 + timedelta(seconds=i)
        for p in range(participants):
            for direction in legs:
                out.append(MetricSample(
                    at=at, room=room, call_id="call-1", participant=f"p{p}",
                    leg=f"p{p}-{direction}", direction=direction,  # type: ignore[arg-type]
                    kind="video", bitrate_in_kbps=400.0 + (i * 7 + p) % 300,
                    bitrate_out_kbps=350.0 + (i * 3) % 200,
                    rtt_ms=None if direction == "publish" else 20.0 + (i + p) % 40,
                    loss_fraction=((i + p) % 50) / 1000, loss_cumulative=i // 20,
                    jitter_ms=2.0 + (i % 5), fps=18.0 + (i % 4), width=640,
                    height=480 if (i // 600) % 2 == 0 else 360,
                    quality="high" if (i // 600) % 2 == 0 else "medium"))
    return out


def make_events(room: str, participants: int) -> list[CallEvent]:
    out = []
    for p in range(participants):
        who = f"p{p}"
        out.append(CallEvent("participant_joined", room, who, "call-1", at=T0))
        out.append(CallEvent("first_frame_received", room, who, "call-1",
                             at=T0 + timedelta(seconds=2), data={"after_s": 2.0 + p / 10}))
        for k in range(3):
            s = 300 + 900 * k + p * 7
            out.append(CallEvent("reconnect_started", room, who, "call-1",
                                 at=T0 + timedelta(seconds=s)))
            out.append(CallEvent("reconnect_succeeded", room, who, "call-1",
                                 at=T0 + timedelta(seconds=s + 3)))
            out.append(CallEvent("quality_changed", room, who, "call-1",
                                 at=T0 + timedelta(seconds=s + 60), data={"to": "medium"}))
    for k in range(4):
        out.append(CallEvent("fault_started", room, None, "call-1",
                             at=T0 + timedelta(seconds=600 + 800 * k),
                             data={"fault_id": f"f{k}", "type": "loss"}))
        out.append(CallEvent("fault_ended", room, None, "call-1",
                             at=T0 + timedelta(seconds=660 + 800 * k), data={"fault_id": f"f{k}"}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--runs", type=int, default=3, help="ingest repetitions")
    parser.add_argument("--queries", type=int, default=15, help="dashboard repetitions")
    parser.add_argument("--max-points", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    legs = ("publish", "subscribe")

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        server = SecantusProcess(Path(tmp) / "secantus")
        server.start()
        client = mongo_client(server.url)
        try:
            samples = make_samples("bench", args.participants, args.seconds, legs)
            events = make_events("bench", args.participants)
            ingest: list[dict[str, Any]] = []
            db = client["bench_0"]
            for run in range(args.runs):
                db = client[f"bench_{run}"]
                store = MetricsStore(db, flush_interval_s=0.05)
                store.ensure_indexes()  # index builds are a one-off, not ingest
                started = time.perf_counter()
                for s in samples:
                    store.record(s)
                enqueue_s = time.perf_counter() - started
                for e in events:
                    store.emit(e)
                ok = store.flush(timeout=300)
                total_s = time.perf_counter() - started
                stats = store.stats()
                store.close()
                assert ok and stats["dropped_overflow"] == 0, stats
                ingest.append({"samples": len(samples), "seconds": total_s,
                               "samples_per_s": len(samples) / total_s,
                               "record_us_per_sample": enqueue_s / len(samples) * 1e6,
                               "documents": db["samples"].count_documents({})})
            sel = Selection(room="bench", start=T0, end=T0 + timedelta(seconds=args.seconds))
            timings: dict[str, list[float]] = {"query_samples": [], "query_events": [],
                                               "kpis": [], "figures": [], "serialise": [],
                                               "total": []}
            points = 0
            for _ in range(args.queries):
                t0 = time.perf_counter()
                series = query_samples(db, sel, max_points=args.max_points)
                t1 = time.perf_counter()
                evs = query_events(db, sel)
                t2 = time.perf_counter()
                compute_kpis(series, evs, sel.end)
                t3 = time.perf_counter()
                figs = build_figures(series, evs, sel)
                t4 = time.perf_counter()
                for fig in figs.values():
                    fig.to_json()
                t5 = time.perf_counter()
                points = len(series.rows)
                for key, value in (("query_samples", t1 - t0), ("query_events", t2 - t1),
                                   ("kpis", t3 - t2), ("figures", t4 - t3),
                                   ("serialise", t5 - t4), ("total", t5 - t0)):
                    timings[key].append(value * 1000)
        finally:
            client.close()
            server.stop()

    rates = [r["samples_per_s"] for r in ingest]
    result = {
        "benchmark": "metrics",
        "backend": "embedded SecantusDB 0.7.0b3 (loopback, temp dir)",
        "when": datetime.now(UTC).isoformat(),
        # A shared 2-core box: the load at the end says how much the figures were disturbed.
        "load_average_1_5_15": list(os.getloadavg()), "cpus": os.cpu_count(),
        "participants": args.participants, "legs_per_participant": len(legs),
        "seconds": args.seconds, "samples": len(samples), "events": len(events),
        "ingest": {"runs": ingest, "median_samples_per_s": statistics.median(rates),
                   "min_samples_per_s": min(rates), "target_samples_per_s": 20_000},
        "dashboard": {
            "max_points": args.max_points, "points_returned": points, "charts": 5,
            "ms": {k: {"median": statistics.median(v), "p95": pct(v, 95), "p99": pct(v, 99)}
                   for k, v in timings.items()},
            "target_ms": 500,
            "query_plus_figures_median_ms": statistics.median(
                [a + b + c + d for a, b, c, d in zip(timings["query_samples"],
                                                     timings["query_events"], timings["kpis"],
                                                     timings["figures"], strict=True)]),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics.json").write_text(json.dumps(result, indent=1))
    dash = result["dashboard"]["ms"]
    print(f"metrics on embedded SecantusDB: ingest median {statistics.median(rates):,.0f} "
          f"samples/s (min {min(rates):,.0f}; target 20,000); 1 h x {args.participants} "
          f"participants x {len(legs)} legs query+KPIs+5 figures median "
          f"{result['dashboard']['query_plus_figures_median_ms']:.0f} ms, total incl. JSON "
          f"median {dash['total']['median']:.0f} / p95 {dash['total']['p95']:.0f} / "
          f"p99 {dash['total']['p99']:.0f} ms (target 500); load avg "
          f"{os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
