"""Shared fixtures: real embedded Valkey and SecantusDB (no fakes), one pair per test session;
a media loop in its own thread. Plain fakes (clock, epoch) are in tests/fakes.py."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
import redis

from videochat import eventloop
from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import mongo_client, redis_client

if eventloop.available() == "uvloop":
    # Every asyncio.run in a test builds the loop the app's media runs on: Streamlit's server
    # loop is uvloop wherever uvloop is installed (videochat/eventloop.py).
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secantus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusProcess]:
    server = SecantusProcess(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(valkey_server: ValkeyProcess) -> Iterator[redis.Redis]:
    """A client on a fresh logical database; flushed after the test."""
    if valkey_server.proc is None or valkey_server.proc.poll() is not None:
        valkey_server.start()  # a previous test may have killed it
    client = redis_client(valkey_server.url)
    client.flushdb()
    yield client
    try:
        client.flushdb()
    except redis.RedisError:
        pass
    client.close()


@pytest.fixture
def mongo_db(secantus_server: SecantusProcess) -> Iterator[pymongo.database.Database]:  # type: ignore[type-arg]
    """A uniquely named database, dropped after the test."""
    if secantus_server.proc is None or secantus_server.proc.poll() is not None:
        secantus_server.start()
    client = mongo_client(secantus_server.url)
    name = "t_" + uuid.uuid4().hex[:12]
    yield client[name]
    try:
        client.drop_database(name)
    except pymongo.errors.PyMongoError:
        pass
    client.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The media loop of an app process, running in its own thread."""
    lp = eventloop.factory()()
    thread = threading.Thread(target=lp.run_forever, name="test-media-loop", daemon=True)
    thread.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    thread.join(5)
    # A loop still holding tasks (a bot host's watchers being cancelled) is left to the
    # collector: closing it would destroy them mid-cancel.
    if not lp.is_running() and not asyncio.all_tasks(lp):
        lp.close()
