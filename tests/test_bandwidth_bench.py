"""The bandwidth benchmark's figures, from a made-up run: what it reports, never how fast."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from fakes import EPOCH

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bandwidth import aggregate, fault_span, profiles, summarize  # noqa: E402
from videochat.metrics.stats import MetricSample  # noqa: E402
from videochat.qa.assertions import FaultWindow, Sample, TimelineEvent  # noqa: E402


def _server(t: float, leg: str, kind: str, **kw: object) -> MetricSample:
    return MetricSample(at=EPOCH + timedelta(seconds=t), room="r", call_id=None,
                        participant="alice", leg=leg, direction="subscribe",
                        kind=kind, **kw)  # type: ignore[arg-type]


def test_the_figures_count_only_the_fault_and_the_leg_that_carried_video() -> None:
    span = fault_span([FaultWindow("bandwidth", "alice", 10.0, 20.0),
                       FaultWindow("latency", "alice", 10.0, 20.5),
                       FaultWindow("loss", "bob", 0.0, 40.0)])
    assert span == (10.0, 20.5)
    fps = [Sample(float(t), "alice received a:sub0@browser", 30.0 if t < 10 else 9.0)
           for t in range(30)] + [Sample(15.0, "bob received b:sub0@browser", 0.0)]
    events = [TimelineEvent(12.0, "quality_changed", "alice", "480p30 → 360p24"),
              TimelineEvent(5.0, "quality_changed", "alice", "720p30 → 480p30"),
              TimelineEvent(13.0, "quality_changed", "bob", "480p30 → 360p24")]
    samples = []
    for t in range(30):
        rung, delivery = ("480p30", "forwarded") if t < 12 else ("360p24", "transcoded")
        samples.append(_server(t, "a:sub0", "video", fps=20.0, quality=rung,
                               delivery=delivery, bitrate_out_kbps=150.0))
        samples.append(_server(t, "a:sub1", "video", fps=0.0, quality="480p30",
                               delivery="forwarded"))  # the warm spare
        samples.append(_server(t, "a:sub0", "audio", loss_fraction=0.02))
        samples.append(_server(t, "a:sub0@browser", "video", source="browser", fps=9.0,
                               concealed_pct=1.0 if t < 15 else 3.0))
    got = summarize(span, fps, events, samples, EPOCH)
    assert got["fps"] == {"n": 11, "median": 9.0, "p10": 9.0, "min": 9.0}
    assert got["fps_settled"]["n"] == 6
    assert got["rung_changes"] == 1 and got["rung_change_list"] == ["2.0s 480p30 → 360p24"]
    assert got["held_s"] == {"360p24/transcoded": 9, "480p30/forwarded": 2}
    assert got["delivery_switches"] == 1
    assert got["audio"]["loss_pct_mean"] == 2.0 and got["audio"]["concealed_pct_max"] == 3.0
    assert [row[0] for row in got["timeline"]] == list(range(-5, 16))  # fault -5 s .. +5 s
    assert summarize(None, fps, events, samples, EPOCH) == {"error": "no fault window"}
    agg = aggregate([{**got, "passed": True}, {**got, "passed": False, "error": "x"}])
    assert agg["fps_median"] == 9.0 and agg["passed"] == 1 and agg["errors"] == ["x"]


def test_every_profile_is_a_valid_scenario_with_its_fault_on_the_viewer() -> None:
    chosen = profiles()
    assert {"thin-200k", "1m-600ms", "bandwidth-300kbps"} <= set(chosen)
    for scenario, _target in chosen.values():
        assert scenario.fault_steps and all(s.target == "alice" for s in scenario.fault_steps)
