"""Cause beside effect: a fault's target's media right now, from the stored samples (real
SecantusDB), and on the Faults page (Streamlit AppTest on real Valkey and SecantusDB)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from pymongo.database import Database

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.backends.services import mongo_client
from videochat.call.presence import Presence
from videochat.clocks import utcnow
from videochat.faults.control import FaultControl
from videochat.faults.model import parse_fault
from videochat.metrics.live import live_effects
from videochat.metrics.stats import MetricSample
from videochat.metrics.store import MetricsStore

Db = Database[dict[str, Any]]


def record_call(db: Db, room: str, *, seconds: int = 8, frozen_from: int | None = None,
                start: datetime | None = None) -> None:
    """ana and bob; bob's received video freezes from `frozen_from` (fps 0 on his legs)."""
    store = MetricsStore(db, flush_interval_s=0.1)
    start = start or utcnow().replace(microsecond=0) - timedelta(seconds=seconds)
    for i in range(seconds):
        at = start + timedelta(seconds=i)
        for who in ("ana", "bob"):
            frozen = who == "bob" and frozen_from is not None and i >= frozen_from
            legs = [(f"{who}:pub", "publish", "server", 600.0, None, 20.0, 0.0),
                    (f"{who}:sub0", "subscribe", "server", None, 550.0,
                     0.0 if frozen else 20.0, 0.2 if frozen else 0.0),
                    (f"{who}:sub1", "subscribe", "server", None, 2.0, 0.0, 0.0),  # spare
                    (f"{who}:sub0@browser", "subscribe", "browser", 520.0, None,
                     0.0 if frozen else 19.0, 0.25 if frozen else 0.01)]
            for leg, direction, source, bi, bo, fps, lf in legs:
                store.record(MetricSample(
                    at=at, room=room, call_id="c", participant=who, leg=leg,
                    direction=direction, kind="video", source=source,  # type: ignore[arg-type]
                    bitrate_in_kbps=bi, bitrate_out_kbps=bo, fps=fps, loss_fraction=lf))
    assert store.close(20)


def test_live_effect_of_a_participant_and_a_room(mongo_db: Db) -> None:
    record_call(mongo_db, "r", frozen_from=5)
    (bob,) = live_effects(mongo_db, "r", "bob")
    assert bob.sends is not None and (bob.sends.kbps, bob.sends.fps) == (600.0, 20.0)
    # What bob receives, from his own page; frozen: 0 fps, not "no data".
    assert bob.receives is not None and bob.receives.by == "page"
    assert (bob.receives.kbps, bob.receives.fps, bob.receives.loss) == (520.0, 0.0, 0.25)
    assert bob.text() == "bob sends 600 kbps · 20 fps · 0% loss — receives 520 kbps · 0 fps · " \
                         "25% loss (page)"
    room = live_effects(mongo_db, "r")
    assert [e.participant for e in room] == ["ana", "bob"]
    assert room[0].receives is not None and room[0].receives.fps == 19.0
    # Nothing recent: nothing shown (the page then says so).
    assert live_effects(mongo_db, "r", now=utcnow() + timedelta(seconds=30)) == []


def test_a_leg_frozen_from_the_first_second_of_a_minute_still_shows_at_0_fps(
        mongo_db: Db) -> None:
    # Samples are stored in one document per leg and minute: bob's freeze starts exactly as a
    # new minute's document starts, so that document holds nothing but zeros for his legs.
    minute = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=3)
    record_call(mongo_db, "r-edge", frozen_from=5, start=minute - timedelta(seconds=5))
    (bob,) = live_effects(mongo_db, "r-edge", "bob", now=minute + timedelta(seconds=3))
    assert bob.receives is not None and bob.receives.by == "page"
    assert (bob.receives.fps, bob.receives.loss) == (0.0, 0.25)
    (ana,) = live_effects(mongo_db, "r-edge", "ana", now=minute + timedelta(seconds=3))
    assert ana.receives is not None and ana.receives.fps == 19.0


@pytest.fixture
def page_env(monkeypatch: pytest.MonkeyPatch, valkey_server: ValkeyProcess,
             secantus_server: SecantusProcess, redis_conn: redis.Redis, tmp_path: Any
             ) -> Iterator[Db]:
    import streamlit as st

    monkeypatch.setenv("REDIS_URL", valkey_server.url)
    monkeypatch.setenv("MONGODB_URI", secantus_server.url)
    monkeypatch.setenv("VIDEOCHAT_DB", "t_faults_live")
    monkeypatch.setenv("VIDEOCHAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    st.cache_resource.clear()
    Presence(redis_conn).join("r-live", "p-b", "bob", time.time())
    client = mongo_client(secantus_server.url)
    client.drop_database("t_faults_live")
    yield client["t_faults_live"]
    client.drop_database("t_faults_live")
    client.close()
    st.cache_resource.clear()


def _page() -> None:
    from videochat.ui.faults import render

    render()


def test_faults_page_shows_the_targets_media_beside_the_fault(
        page_env: Db, redis_conn: redis.Redis) -> None:
    from streamlit.testing.v1 import AppTest

    record_call(page_env, "r-live", frozen_from=5)
    FaultControl(redis_conn).inject(parse_fault(
        {"kind": "loss", "room": "r-live", "participant": "bob", "percent": 20,
         "duration_s": 60}))
    at = AppTest.from_function(_page, default_timeout=20).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "📈 bob sends 600 kbps · 20 fps · 0% loss — receives 520 kbps · 0 fps · 25% " \
           "loss \\(page\\)" in text, text
    FaultControl(redis_conn).clear()
