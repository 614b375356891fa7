"""The fast signalling path of videochat/ui/webrtc.py: offers answered over POST /_vc/offer.

The worker here is a stand-in for streamlit-webrtc's WebRtcWorker (which needs a running
Streamlit server); the real path is exercised by the browser tests, which assert that the
participants' legs were answered over it.
"""

from __future__ import annotations

import threading
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient
from streamlit_webrtc.component import WebRtcStreamerContext, WebRtcStreamerState

from videochat.ui import webrtc


def offer(ufrag: str) -> str:
    return f"v=0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:x\r\n"


class StandInWorker:
    """Answers like WebRtcWorker.process_offer does: sets pc.remoteDescription and an answer."""

    created = 0

    def __init__(self) -> None:
        StandInWorker.created += 1
        self.pc: Any = None
        self.local_description: Any = None

    def process_offer(self, sdp: str, type_: str, timeout: float | None = None) -> None:
        assert type_ == "offer"
        self.pc = SimpleNamespace(remoteDescription=SimpleNamespace(sdp=sdp))
        self.local_description = SimpleNamespace(sdp=f"answer to {webrtc._ufrag(sdp)}",
                                                 type="answer")


@pytest.fixture
def streamer() -> Any:
    """A registered streamer 'sub-abcdef123456-0-0' with its live context."""
    StandInWorker.created = 0
    ctx: Any = WebRtcStreamerContext(worker=None,
                                     state=WebRtcStreamerState(playing=False, signalling=False))
    workers: list[StandInWorker] = []

    def make_worker() -> StandInWorker:
        workers.append(StandInWorker())
        return workers[-1]

    key = "sub-abcdef123456-0-0"
    webrtc._streamers[key] = webrtc._Streamer(weakref.ref(ctx), make_worker)
    token = webrtc.token_for("abcdef123456ffff")
    yield SimpleNamespace(ctx=ctx, key=key, token=token, workers=workers, make=make_worker)
    webrtc.forget_streamers("abcdef123456ffff")


def test_answer_offer_creates_one_worker_per_offer(streamer: Any) -> None:
    ctx = streamer.ctx
    answer = webrtc.answer_offer(ctx, streamer.make, offer("u1"))
    assert answer == {"sdp": "answer to u1", "type": "answer"}
    assert ctx._get_worker() is streamer.workers[0]
    # A script run that began before the frontend said "signalling" must not stop it.
    assert ctx.state == WebRtcStreamerState(playing=False, signalling=True)
    # The component path (or a retry) with the same offer finds the same worker.
    again = webrtc.answer_offer(ctx, lambda: pytest.fail("second worker"), offer("u1"))
    assert again == answer and StandInWorker.created == 1
    # A different offer (a new browser connection) is not given the old worker's answer.
    with pytest.raises(webrtc._StaleOffer):
        webrtc.answer_offer(ctx, lambda: pytest.fail("second worker"), offer("u2"))


def test_concurrent_offers_share_the_streamers_lock(streamer: Any) -> None:
    results: list[dict[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(
        webrtc.answer_offer(streamer.ctx, streamer.make, offer("same")))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and StandInWorker.created == 1


def client() -> TestClient:
    app = Starlette(routes=[Route(webrtc.offer_url(), webrtc.offer_endpoint,
                                  methods=["POST"])])
    return TestClient(app, base_url="http://127.0.0.1:8501")


def test_endpoint_answers_a_good_offer(streamer: Any) -> None:
    before = webrtc.fast_answers
    r = client().post("/_vc/offer", json={"key": streamer.key, "token": streamer.token,
                                          "type": "offer", "sdp": offer("u9")})
    assert r.status_code == 200, r.text
    assert r.json() == {"sdp": "answer to u9", "type": "answer"}
    assert webrtc.fast_answers == before + 1
    assert streamer.ctx._get_worker() is streamer.workers[0]


@pytest.mark.parametrize(("body", "headers", "status"), [
    ({"token": "wrong"}, {}, 403),
    ({}, {"Origin": "http://evil.example"}, 403),
    ({"type": "answer"}, {}, 400),
    ({"sdp": "x" * (webrtc.MAX_SDP_CHARS + 1)}, {}, 400),
    ({"key": "sub-abcdef123456-9-9"}, {}, 404),
    ({"key": "nonsense"}, {}, 403),
])
def test_endpoint_refuses_bad_requests(streamer: Any, body: dict[str, Any],
                                       headers: dict[str, str], status: int) -> None:
    payload = {"key": streamer.key, "token": streamer.token, "type": "offer",
               "sdp": offer("u1"), **body}
    r = client().post("/_vc/offer", json=payload, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert StandInWorker.created == 0


def test_endpoint_refuses_a_second_connections_offer(streamer: Any) -> None:
    c = client()
    ok = c.post("/_vc/offer", json={"key": streamer.key, "token": streamer.token,
                                    "type": "offer", "sdp": offer("first")})
    assert ok.status_code == 200
    r = c.post("/_vc/offer", json={"key": streamer.key, "token": streamer.token,
                                   "type": "offer", "sdp": offer("second")})
    assert r.status_code == 409


def test_forgotten_participant_cannot_offer(streamer: Any) -> None:
    webrtc.forget_streamers("abcdef123456ffff")
    r = client().post("/_vc/offer", json={"key": streamer.key, "token": streamer.token,
                                          "type": "offer", "sdp": offer("u1")})
    assert r.status_code == 403
