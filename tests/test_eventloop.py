"""The loop benchmarks and the CLI build is the one the app's media runs on."""

from __future__ import annotations

import asyncio

from videochat import eventloop


async def _kind() -> str:
    return eventloop.kind_of(asyncio.get_running_loop())


def test_run_uses_uvloop_where_installed_and_asyncio_on_request() -> None:
    assert eventloop.available() == "uvloop"  # a requirement: the app's server loop uses it
    assert eventloop.run(_kind()) == "uvloop"
    assert eventloop.run(_kind(), "asyncio") == "asyncio"



def test_the_tests_run_on_the_apps_loop() -> None:
    # tests/conftest.py: the media tests' asyncio.run builds the loop the app's media uses.
    assert asyncio.run(_kind()) == "uvloop"
