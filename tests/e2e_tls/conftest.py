"""HTTPS end-to-end tests run in their own package: their own loopback-only namespace and
browser (Playwright's sync API allows one instance at a time, so this package starts after the
plain-HTTP package has closed its browser)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import _require_browser_stack
from videochat.qa.harness import Browser, NetNamespace


@pytest.fixture(scope="package")
def tls_netns() -> Iterator[NetNamespace]:
    _require_browser_stack()
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="package")
def tls_browser(tls_netns: NetNamespace) -> Iterator[Browser]:
    b = Browser(tls_netns)
    yield b
    b.close()
