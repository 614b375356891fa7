"""Objectives during faults, as people saw them: min_fps_during_faults, max_freeze_s,
max_reconnects (definitions in docs/TESTING.md), and the measurements they read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from videochat.exceptions import ValidationError
from videochat.metrics.stats import MetricSample
from videochat.qa import FaultWindow, RunMeasurements, Sample, evaluate
from videochat.qa.measurements import browser_measurements, series_from_samples
from videochat.qa.scenario import Assertions, find_scenario, parse_scenario

T0 = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC)
LOSS = FaultWindow("loss", "room", 5.0, 15.0)
OBJECTIVES = Assertions(min_fps_during_faults=4, max_freeze_s=1.5, max_reconnects=0)


def received() -> list[Sample]:
    out = []
    for t in range(0, 25):
        # ana's page: 20 fps, 6-9 fps inside the fault; the bot: 15 fps throughout.
        out.append(Sample(float(t), "ana received ana:sub0@browser",
                          6.0 + t % 4 if 5 <= t <= 15 else 20.0))
        out.append(Sample(float(t), "ana→bot1 (bot)", 15.0))
    return out


def measured(**kw: object) -> RunMeasurements:
    m = RunMeasurements(fault_windows=[LOSS], received_fps=received(),
                        freezes={"ana": (3, 1.9, 1.2)}, reconnect_times_s={"ana": []})
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def by_name(m: RunMeasurements, a: Assertions = OBJECTIVES) -> dict[str, object]:
    return {r.name: r for r in evaluate(a, m)}


def test_objectives_pass_on_what_was_seen_during_the_fault() -> None:
    r = by_name(measured())
    fps, freeze, reconnects = (r["min_fps_during_faults"], r["max_freeze_s"],
                               r["max_reconnects"])
    assert fps.passed and fps.measured == pytest.approx(6.0)  # type: ignore[attr-defined]
    assert "lowest: ana received ana:sub0@browser (11 samples)" in fps.detail  # type: ignore[attr-defined]
    assert "loss on room 5.0-15.0 s" in fps.detail  # type: ignore[attr-defined]
    assert freeze.passed and freeze.measured == 1.2  # type: ignore[attr-defined]
    assert "ana 3 freezes, 1.90 s frozen" in freeze.detail  # type: ignore[attr-defined]
    assert reconnects.passed and reconnects.measured == 0  # type: ignore[attr-defined]


def test_objectives_fail_on_the_real_measurement() -> None:
    strict = Assertions(min_fps_during_faults=15, max_freeze_s=0.5, max_reconnects=0)
    r = by_name(measured(reconnect_times_s={"ana": [2.1, 1.0], "bot1": []}), strict)
    assert [(k, v.passed, v.measured) for k, v in r.items()] == [  # type: ignore[attr-defined]
        ("min_fps_during_faults", False, 6.0), ("max_freeze_s", False, 1.2),
        ("max_reconnects", False, 2)]
    assert "most: ana; per participant: ana 2, bot1 0" in r["max_reconnects"].detail  # type: ignore[attr-defined]


def test_missing_measurements_fail_never_pass() -> None:
    m = RunMeasurements(fault_windows=[LOSS])
    for r in evaluate(OBJECTIVES, m):
        assert not r.passed and r.detail.startswith("not measured"), r
    no_fault = by_name(measured(fault_windows=[]))["min_fps_during_faults"]
    assert not no_fault.passed and "no fault window" in no_fault.detail  # type: ignore[attr-defined]
    outside = by_name(measured(received_fps=[Sample(30.0, "x", 20.0)]))["min_fps_during_faults"]
    assert not outside.passed and "no received-fps sample inside" in outside.detail  # type: ignore[attr-defined]
    assert by_name(measured(freezes={}))["max_freeze_s"].detail.startswith("not measured")  # type: ignore[attr-defined]


def sample(i: int, leg: str, *, source: str = "browser", fps: float = 20.0,
           fc: int | None = None, fz: float | None = None) -> MetricSample:
    return MetricSample(at=T0 + timedelta(seconds=i), room="r", call_id="c",
                        participant=leg.split(":")[0], leg=leg, direction="subscribe",
                        kind="video", source=source, fps=fps,  # type: ignore[arg-type]
                        freeze_count=fc, freeze_s=fz)


def test_browser_measurements_from_page_samples() -> None:
    samples = []
    for i in range(20):
        # Already 1 freeze (0.5 s) before t0; 1 more of 0.8 s at 8 s; a rebuild at 12 s
        # restarts the counters, then a 0.3 s freeze at 15 s.
        fc, fz = (1, 0.5) if i < 8 else (2, 1.3)
        if i >= 12:
            fc, fz = (0, 0.0) if i < 15 else (1, 0.3)
        samples.append(sample(i, "ana:sub0@browser", fc=fc, fz=fz))
        samples.append(sample(i, "ana:sub1@browser", fps=0.0, fc=0, fz=0.0))  # warm spare
        samples.append(sample(i, "ana:sub0", source="server", fps=18.0))
    fps, freezes = browser_measurements(samples, T0)
    assert {s.series for s in fps} == {"ana received ana:sub0@browser"}
    assert freezes == {"ana": (2, 1.1, pytest.approx(0.8))}
    # The server's series keep to the server's legs (existing objectives keep their meaning).
    server_fps, _, _ = series_from_samples(samples, T0)
    assert {s.series for s in server_fps} == {"ana subscribe ana:sub0"}


@pytest.mark.parametrize("name", ["poor-3g", "very-bad-network", "latency-spike"])
def test_builtin_network_scenarios_use_the_new_objectives(name: str) -> None:
    given = find_scenario(name).assertions.given()
    assert {"max_freeze_s", "max_reconnects"} <= set(given)
    if name != "latency-spike":  # a 2 s spike: too short to judge a frame rate within
        assert "min_fps_during_faults" in given


def test_an_unknown_objective_is_refused_with_its_line() -> None:
    text = ('name = "x"\nduration_s = 10\n\n[[participants]]\nname = "a"\nkind = "bot"\n\n'
            "[assertions]\nmax_freeze_s = 1\nmax_freezes_s = 2\n")
    with pytest.raises(ValidationError) as err:
        parse_scenario(text, "x.toml")
    assert "line 10" in str(err.value) and "assertions.max_freezes_s" in str(err.value)
