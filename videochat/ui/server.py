"""The server side of the app that is not a page: start-up, shut-down, and our one route.

`streamlit run app.py` finds the `st.App` that app.py declares and serves it with uvicorn.
That gives the app what a plain script never had (measured on a fresh process, issue 13):
- **A start-up hook.** The multipage mode is fixed to `st.navigation` before any tab connects
  (a first visit no longer runs the legacy `pages/` navigation at all), and the process-wide
  runtime (embedded Valkey and SecantusDB, the media loop's services) is built in the
  background right away instead of inside the first visitor's script run: that run imported
  and started everything (≈3 s) before the call could begin.
- **A declared route** for fast signalling (`POST /_vc/offer`), instead of finding Streamlit's
  Starlette app among the objects the garbage collector tracks.
- **Restart routes** (issue 17): `GET /_vc/boot` answers this process's boot id, which tells a
  tab whose connection dropped whether the server it comes back to is a new process (reload
  and rejoin by token) or the same one (let Streamlit reconnect); `POST /_vc/chat` takes the
  messages typed while the server was away (`videochat/ui/outbox.py`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from streamlit import config as st_config

from videochat import eventloop
from videochat.ui import navigation

logger = logging.getLogger(__name__)

OFFER_PATH = "_vc/offer"
BOOT_PATH = "_vc/boot"
CHAT_PATH = "_vc/chat"
# One per process: a tab compares it with the one its page was rendered by.
BOOT_ID = uuid.uuid4().hex

_runtime: object | None = None  # the AppRuntime once the start-up hook has built it
_stopping = False  # set when the process begins to stop: tabs must not reconnect to it


def _url(path: str) -> str:
    base = str(st_config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/{path}" if base else f"/{path}"


def offer_url() -> str:
    return _url(OFFER_PATH)


def boot_url() -> str:
    return _url(BOOT_PATH)


def chat_url() -> str:
    return _url(CHAT_PATH)


def mark_stopping() -> None:
    """The process is going away (graceful stop): /_vc/boot says so, and a tab's restart
    watch waits for the next process instead of reconnecting to this one."""
    global _stopping
    _stopping = True


def runtime() -> object | None:
    """The process's AppRuntime if already built (routes must not wait for it)."""
    return _runtime


async def _boot(request: Request) -> Response:
    return JSONResponse({"boot": BOOT_ID, "ready": _runtime is not None, "stopping": _stopping,
                         "loop": eventloop.kind_of(asyncio.get_running_loop())},
                        headers={"Cache-Control": "no-store"})


async def _chat(request: Request) -> Response:
    from videochat.ui.outbox import chat_endpoint

    return await chat_endpoint(request)


async def _offer(request: Request) -> Response:
    # Imported on first use: streamlit-webrtc declares its component when imported, and a
    # component declared before the runtime exists is never served (blank tiles, seen here).
    from videochat.ui.webrtc import offer_endpoint

    return await offer_endpoint(request)


def routes() -> list[Route]:
    """Declared with the app (app.py): loaded before Streamlit's runtime exists, so nothing
    here may import streamlit-webrtc."""
    return [Route(offer_url(), _offer, methods=["POST"]),
            Route(boot_url(), _boot, methods=["GET"]),
            Route(chat_url(), _chat, methods=["POST"])]


def _warm_up(build: Callable[[], object]) -> None:
    try:
        build()
    except Exception:  # noqa: BLE001 - the first page run builds it again and shows the error
        logger.exception("building the app runtime at start-up failed")


def _shut_down() -> None:
    """Graceful stop (issue 17): uvicorn has closed the tabs' sockets (code 1012, "service
    restart": the browsers reconnect to the next process); flush and hand over within the
    budget. Only what was built: a stop must never start anything."""
    from videochat.runtime import SHUTDOWN_BUDGET_S, built_runtime

    rt = built_runtime()
    if rt is None:
        return  # stopped before its runtime was built: servers it started stop at exit
    started = time.monotonic()
    done = rt.shut_down(SHUTDOWN_BUDGET_S)
    logger.info("graceful stop done in %.2f s%s", time.monotonic() - started,
                "" if all(done.values()) else
                f" (incomplete: {', '.join(k for k, v in done.items() if not v)})")


def _build_runtime() -> object:
    # Imported here: the media stack's module graph loads in this thread while the server
    # already answers.
    import gc

    from videochat.ui import webrtc
    from videochat.ui.state import get_runtime

    global _runtime
    webrtc.register_component()
    rt = get_runtime()
    _runtime = rt
    # Then the pages' own modules (pandas, plotly…), so that the freeze below covers them too:
    # modules imported after a freeze stay in every full collection. After the build, so that
    # the first visitor's call does not wait for them.
    import videochat.ui.call
    import videochat.ui.diagnostics
    import videochat.ui.faults
    import videochat.ui.qa  # noqa: F401

    # Start-up objects (Streamlit, aiortc, our services: ~167k) out of the collector's view:
    # a full collection over them took 83 ms, a stall every chat message and frame then waits on.
    gc.collect()
    gc.freeze()
    return rt


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    navigation.use_v2_from_start()
    logger.info("server and media loop: %s", eventloop.kind_of(asyncio.get_running_loop()))
    from videochat.ui.cached import get_services

    # Not awaited: the server answers (health, the first page) while these run. The embedded
    # servers start at once, beside the imports; the runtime's build, and any page run that
    # needs it meanwhile, wait on the same cached objects.
    for name, build in (("warm-up-backends", get_services), ("warm-up", _build_runtime)):
        threading.Thread(target=_warm_up, args=(build,), name=name, daemon=True).start()
    yield
    mark_stopping()
    # Off the server's loop: the media loop some steps wait on may be this very loop.
    await asyncio.to_thread(_shut_down)
