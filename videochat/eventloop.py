"""Which asyncio event loop the media runs on.

The app's media shares Streamlit's server loop, and Streamlit builds that loop with uvloop
whenever uvloop is importable. uvloop is in requirements.txt because most of a forwarded
call's server CPU is the loop itself, not aiortc: per UDP datagram, asyncio's selector loop
wakes, reads one datagram and sends through Python-level transports, where uvloop does both
in C (measured with bench/capacity.py `--loop`, see docs/TESTING.md). Benchmarks and the CLI
build their loops here, so they measure the loop the app runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)

LoopKind = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def available() -> LoopKind:
    """The loop Streamlit's server (and so the media) runs on in this environment."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def kind_of(loop: asyncio.AbstractEventLoop) -> LoopKind:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def factory(kind: LoopKind | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory for `asyncio.Runner`: `kind`, or what the app would use here."""
    if (kind or available()) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    # Not asyncio.new_event_loop: that follows the loop policy, which may be uvloop's.
    if sys.platform == "win32":
        return asyncio.ProactorEventLoop
    return asyncio.SelectorEventLoop


def run(main: Coroutine[Any, Any, T], kind: LoopKind | None = None) -> T:
    """`asyncio.run` on the loop the app uses (or on `kind`)."""
    with asyncio.Runner(loop_factory=factory(kind)) as runner:
        return runner.run(main)
