"""Real app + real headless Chromium, all inside a loopback-only network namespace."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from videochat.qa.harness import CHROMIUM, AppProcess, Browser, NetNamespace, netns_available

# A smaller capture keeps three browsers and the relay within a 2-core machine.
E2E_ENV = {"VIDEOCHAT_RECONNECT_GRACE_S": "4", "VIDEOCHAT_LOG_LEVEL": "INFO",
           "VIDEOCHAT_CAPTURE": "320x240@15"}


def _require_browser_stack() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not netns_available():
        missing.append("root and iproute2 for a network namespace")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("browser tests cannot run: missing " + ", ".join(missing))
        pytest.skip("browser stack missing: " + ", ".join(missing))


@pytest.fixture(scope="package")
def netns() -> Iterator[NetNamespace]:
    _require_browser_stack()
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="package")
def app(netns: NetNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    proc = AppProcess(tmp_path_factory.mktemp("app-state"), port=8611, netns=netns, env=E2E_ENV)
    proc.start()
    yield proc
    proc.stop()
    print("---- app log (tail) ----\n" + proc.log_tail(80))


@pytest.fixture(scope="package")
def browser(netns: NetNamespace) -> Iterator[Browser]:
    b = Browser(netns)
    yield b
    b.close()


@pytest.fixture
def open_page(browser: Browser, app: AppProcess) -> Iterator[Callable[[str], Any]]:
    pages: list[Any] = []

    def open_(path: str) -> Any:
        page = browser.new_page()
        pages.append(page)
        page.goto(app.url + path)
        return page

    yield open_
    for page in pages:
        try:
            page.context.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until true; returns the seconds it took, fails naming what was awaited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    return "e2e-" + request.node.name.replace("test_", "")[:30].replace("_", "-")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("VIDEOCHAT_TEST_ARTIFACTS", "/tmp/videochat-e2e"))
    path.mkdir(parents=True, exist_ok=True)
    return path
