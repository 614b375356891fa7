"""Browser stats over the call's own signalling route (POST /_vc/offer, type "stats"):
authenticated by the participant's token, size-capped before parsing, into the real store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo.database import Database
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from videochat.clocks import utcnow
from videochat.media.participant import Participant
from videochat.metrics.browser import MAX_BODY_BYTES, BrowserStats
from videochat.metrics.diagnostics import iter_samples
from videochat.metrics.store import MetricsStore
from videochat.ui import webrtc

PID = "abcdef123456ffff"
OTHER = "0123456789abffff"


class Legs:
    def __init__(self) -> None:
        self.legs = {
            "abcdef123456:sub0": SimpleNamespace(
                leg_id="abcdef123456:sub0", room="r9", participant="ana", participant_id=PID,
                direction="subscribe", call_id="c9"),
            "0123456789ab:pub": SimpleNamespace(
                leg_id="0123456789ab:pub", room="r9", participant="bo", participant_id=OTHER,
                direction="publish", call_id="c9"),
        }

    def get(self, leg_id: str) -> Any:
        return self.legs.get(leg_id)


@pytest.fixture
def served(mongo_db: Database[dict[str, Any]]) -> Iterator[Any]:
    store = MetricsStore(mongo_db, flush_interval_s=0.1)
    stats = BrowserStats(store.record, busy=store.busy)
    webrtc.serve_browser_stats(stats, Legs())  # type: ignore[arg-type]
    token = webrtc.token_for(PID)
    webrtc.token_for(OTHER)
    app = Starlette(routes=[Route(webrtc.offer_url(), webrtc.offer_endpoint, methods=["POST"])])
    yield SimpleNamespace(client=TestClient(app, base_url="http://127.0.0.1:8501"),
                          token=token, store=store, stats=stats, db=mongo_db)
    webrtc.serve_browser_stats(None, Legs())  # type: ignore[arg-type]
    webrtc.forget_streamers(PID)
    webrtc.forget_streamers(OTHER)
    store.close(timeout=5)


def body(token: str, key: str = "sub-abcdef123456-0-3", **extra: Any) -> dict[str, Any]:
    now = utcnow().timestamp() * 1000
    return {"type": "stats", "token": token, "sent_at": now,
            "samples": [{"key": key, "at": now - 1000, "fps": 22.5, "freeze_count": 1,
                         "freeze_s": 0.4, "jitter_buffer_ms": 60.0, **extra}]}


def test_stats_are_stored_as_the_legs_browser_end(served: Any) -> None:
    r = served.client.post("/_vc/offer", json=body(served.token))
    assert r.status_code == 200, r.text
    assert served.store.flush(10)
    now = utcnow()
    got = list(iter_samples(served.db, "r9", now - timedelta(minutes=2), now))
    assert [(s.leg, s.source, s.freeze_count, s.jitter_buffer_ms) for s in got] == [
        ("abcdef123456:sub0@browser", "browser", 1, 60.0)]


def test_leg_ids_of_keys_match_the_call_pages() -> None:
    from videochat.ui.call import _leg_id

    me = Participant.__new__(Participant)
    object.__setattr__(me, "id", PID)
    slot = SimpleNamespace(index=2)
    assert webrtc.leg_id_of_key("sub-abcdef123456-2-7") == _leg_id(me, slot)  # type: ignore[arg-type]
    assert webrtc.leg_id_of_key("pub-abcdef123456-3") == _leg_id(me, None)
    assert webrtc.leg_id_of_key("nonsense") is None


@pytest.mark.parametrize(("change", "status", "says"), [
    ({"token": "forged"}, 403, "bad token"),
    ({"key": "pub-0123456789ab-0"}, 403, "not yours"),
    ({"key": "sub-abcdef123456-5-0"}, 403, "not a live leg"),
    ({"fps": 9999}, 400, "fps"),
    ({"colour": "red"}, 400, "colour"),
])
def test_refusals_name_the_reason(served: Any, change: dict[str, Any], status: int,
                                  says: str) -> None:
    token = change.pop("token", served.token)
    r = served.client.post("/_vc/offer", json=body(token, **change))
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_oversized_body_is_refused_before_parsing(served: Any) -> None:
    big = body(served.token)
    big["padding"] = "x" * (MAX_BODY_BYTES + 1)
    r = served.client.post("/_vc/offer", json=big)
    assert r.status_code == 413 and "131072" in r.json()["error"]


def test_rate_and_busy_carry_retry_after(served: Any) -> None:
    statuses = [served.client.post("/_vc/offer", json=body(served.token)) for _ in range(6)]
    assert [r.status_code for r in statuses][-1] == 429
    assert statuses[-1].headers["Retry-After"] == "2"
    webrtc.serve_browser_stats(BrowserStats(lambda s: None, busy=lambda: True), Legs())  # type: ignore[arg-type]
    r = served.client.post("/_vc/offer", json=body(served.token))
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"
