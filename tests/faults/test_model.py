"""Fault value objects, presets, and the /faults page (Streamlit AppTest on real Valkey/Mongo)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st_h

from videochat.backends.embedded import SecantusProcess, ValkeyProcess
from videochat.call.presence import Presence
from videochat.exceptions import InvalidFaultCommand, ValidationError
from videochat.faults.control import ACTIVE, FaultControl
from videochat.faults.kinds import FAULT_KINDS
from videochat.faults.model import (
    ALL_ROOMS,
    PRESETS,
    KillFault,
    LossFault,
    expand_preset,
    fault_to_dict,
    parse_fault,
)

# --- value objects ---------------------------------------------------------------------------


def test_defaults_and_targets() -> None:
    f = parse_fault({"kind": "loss", "room": " r1 ", "participant": "alice", "percent": 20})
    assert isinstance(f, LossFault)
    assert (f.room, f.direction, f.duration_s) == ("r1", "both", 30.0)
    assert f.matches("r1", "alice") and not f.matches("r1", "bob") and not f.matches("r2", "alice")
    assert f.params() == {"direction": "both", "percent": 20.0}
    whole = parse_fault({"kind": "blackout", "room": "r1", "participant": "  "})
    assert whole.participant is None and whole.matches("r1", "anyone")
    everywhere = parse_fault({"kind": "freeze_video", "room": ALL_ROOMS})
    assert everywhere.matches("x", "y")
    kill = parse_fault({"kind": "kill", "room": "r1"})
    assert isinstance(kill, KillFault) and kill.duration_s == 1.0
    outage = parse_fault({"kind": "redis_outage"})
    assert outage.room == ALL_ROOMS and outage.duration_s == 10.0
    assert parse_fault({"kind": "loss", "room": "r", "percent": 5}).id != parse_fault(
        {"kind": "loss", "room": "r", "percent": 5}).id


def test_every_kind_round_trips_as_json() -> None:
    samples = {"loss": {"percent": 5}, "latency": {"ms": 100, "jitter_ms": 20},
               "bandwidth": {"kbps": 300}}
    for kind in FAULT_KINDS:
        f = parse_fault({"kind": kind, "room": "r", **samples.get(kind, {})})
        assert parse_fault(fault_to_dict(f)) == f


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "loss", "room": "r"}, "fault field 'percent' is invalid: is required"),
    ({"kind": "loss", "room": "r", "percent": 0}, "fault percent 0 is invalid"),
    ({"kind": "loss", "room": "r", "percent": 101}, "less than or equal to 100"),
    ({"kind": "loss", "room": "r", "percent": "lots"}, "fault percent 'lots' is invalid"),
    ({"kind": "loss", "room": "r", "percent": 5, "direction": "sideways"}, "fault direction"),
    ({"kind": "latency", "room": "r", "ms": 20_000}, "fault ms 20000 is invalid"),
    ({"kind": "latency", "room": "r", "ms": 10, "kbps": 5}, "'kbps' is invalid: is not a param"),
    ({"kind": "bandwidth", "room": "r", "kbps": 1}, "fault kbps 1 is invalid"),
    ({"kind": "blackout", "room": "r", "duration_s": -1}, "fault duration_s -1 is invalid"),
    ({"kind": "blackout", "room": "r", "duration_s": 7200}, "fault duration_s 7200"),
    ({"kind": "redis_outage", "duration_s": 900}, "fault duration_s 900"),
    ({"kind": "blackout", "room": ""}, "fault room '' is invalid"),
    ({"kind": "blackout", "room": "a\nb"}, "printable"),
    ({"kind": "blackout", "room": "r", "id": "../x"}, "fault id '../x'"),
    ({"kind": "teleport", "room": "r"}, "fault kind 'teleport' is invalid: must be one of"),
    ({"room": "r"}, "fault kind None is invalid"),
    ("loss", "must be an object"),
])
def test_malformed_faults_are_refused_naming_the_value(data: Any, message: str) -> None:
    with pytest.raises(InvalidFaultCommand) as info:
        parse_fault(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValidationError)


@given(st_h.dictionaries(st_h.sampled_from(["kind", "room", "percent", "ms", "kbps",
                                            "direction", "duration_s", "x"]),
                         st_h.one_of(st_h.none(), st_h.integers(-10, 10_000), st_h.text(max_size=5),
                                     st_h.sampled_from(list(FAULT_KINDS)))))
def test_arbitrary_input_is_either_a_fault_or_a_clear_refusal(data: dict[str, Any]) -> None:
    try:
        fault = parse_fault(data)
    except InvalidFaultCommand as exc:
        assert "is invalid" in str(exc)
    else:
        assert fault.kind in FAULT_KINDS


def test_presets_match_the_profiles() -> None:
    faults = {f.kind: f for f in expand_preset("poor-3g", "r1", "alice")}
    assert faults["bandwidth"].kbps == 400  # type: ignore[union-attr]
    assert faults["latency"].ms == 350  # type: ignore[union-attr]
    assert faults["loss"].percent == 5  # type: ignore[union-attr]
    assert all(f.participant == "alice" and f.preset == "poor-3g" for f in faults.values())
    bad = {f.kind: f for f in expand_preset("very-bad-network", "r1", None, duration_s=12)}
    assert (bad["bandwidth"].kbps, bad["latency"].ms, bad["loss"].percent) == (  # type: ignore
        1000, 500, 10)
    assert all(f.duration_s == 12 for f in bad.values())
    drop = {f.kind: f for f in expand_preset("call-drop", "r1", None, direction="up")}
    assert (drop["bandwidth"].kbps, drop["latency"].ms, drop["loss"].percent) == (  # type: ignore
        50, 500, 20)
    assert {f.direction for f in drop.values()} == {"up"}  # type: ignore[union-attr]


def test_scenarios_map_onto_fault_kinds() -> None:
    assert [f.kind for f in expand_preset("signal-reconnect", "r1", "a")] == ["redis_outage"]
    [kill] = expand_preset("full-reconnect", "r1", "alice")
    assert kill.kind == "kill" and kill.participant == "alice"
    [node] = expand_preset("node-failure", "r1", "alice")
    assert node.kind == "kill" and node.participant is None  # the whole room goes
    [sub] = expand_preset("subscriber-bandwidth", "r1", "alice", direction="up")
    assert sub.direction == "down" and sub.kbps == 100  # type: ignore[union-attr]
    assert len(PRESETS) >= 10
    with pytest.raises(InvalidFaultCommand, match="preset 'nope'"):
        expand_preset("nope", "r1", None)


# --- the page ----------------------------------------------------------------------------------

def _page() -> None:
    from videochat.ui.faults import render

    render()


@pytest.fixture
def page_env(monkeypatch: pytest.MonkeyPatch, valkey_server: ValkeyProcess,
             secantus_server: SecantusProcess, redis_conn: redis.Redis, tmp_path: Any
             ) -> Iterator[None]:
    import streamlit as st

    monkeypatch.setenv("REDIS_URL", valkey_server.url)
    monkeypatch.setenv("MONGODB_URI", secantus_server.url)
    monkeypatch.setenv("VIDEOCHAT_DB", "t_faults_page")
    monkeypatch.setenv("VIDEOCHAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # no secrets file
    st.cache_resource.clear()
    Presence(redis_conn).join("r1", "p-a", "alice", time.time())
    yield
    st.cache_resource.clear()


def _app() -> Any:
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(_page, default_timeout=20)


def test_page_needs_the_admin_token_outside_dev_mode(page_env: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOCHAT_DEV_MODE", "false")
    monkeypatch.setenv("VIDEOCHAT_ADMIN_TOKEN", "s3cret")
    at = _app().run()
    assert "needs the admin token" in at.error[0].value
    assert not at.button  # nothing to press without it
    at.query_params["token"] = "wrong"
    at.run()
    assert "wrong admin token" in at.error[0].value
    at.query_params["token"] = "s3cret"
    at.run()
    assert not at.error and at.button(key="f_start")


def test_page_locked_when_no_token_is_configured(page_env: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOCHAT_DEV_MODE", "false")
    at = _app().run()
    assert "VIDEOCHAT_ADMIN_TOKEN is not set" in at.error[0].value


def test_page_starts_lists_and_clears_a_fault(page_env: None, redis_conn: redis.Redis) -> None:
    at = _app().run()
    assert not at.exception
    assert at.selectbox(key="f_room_pick").options == ["r1", "other…"]
    at.selectbox(key="f_who").set_value("alice")
    at.selectbox(key="f_kind").set_value("latency")
    at.run()
    at.number_input(key="f_ms").set_value(300)
    at.radio(key="f_dir").set_value("down")
    at.button(key="f_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "latency(direction=down, ms=300.0, jitter_ms=0.0) on alice in room r1" in (
        at.success[0].value)
    [record] = FaultControl(redis_conn).active()
    assert record.fault.kind == "latency" and record.fault.participant == "alice"
    at.run()
    assert any("Latency" in m.value for m in at.markdown)
    at.button(key=f"f_stop_{record.fault.id}").click().run()
    assert redis_conn.hlen(ACTIVE) == 0

    at.radio(key="f_mode").set_value("Preset").run()
    at.selectbox(key="f_preset").set_value("poor-3g")
    at.button(key="f_start").click().run()
    assert redis_conn.hlen(ACTIVE) == 3
    at.run()
    at.button(key="f_clear_all").click().run()
    assert redis_conn.hlen(ACTIVE) == 0


def test_page_shows_refusals(page_env: None, redis_conn: redis.Redis) -> None:
    at = _app().run()
    at.selectbox(key="f_kind").set_value("mongo_outage").run()
    at.button(key="f_start").click().run()
    assert "MONGODB_URI" in at.error[0].value
    assert redis_conn.hlen(ACTIVE) == 0
