"""One fault taxonomy: the fault model and the scenario steps carry exactly its kinds and
parameters."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from videochat.faults import model
from videochat.faults.kinds import FAULT_KINDS, KINDS, PARAMETERS
from videochat.qa import scenario

FAULT_COMMON = {"id", "kind", "room", "participant", "duration_s", "preset", "direction"}
STEP_COMMON = {"kind", "at_s", "target", "duration_s", "direction"}


def _by_kind(union: Any) -> dict[str, type[BaseModel]]:
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}


def test_faults_and_scenario_steps_have_the_same_kinds_and_parameters() -> None:
    faults, steps = _by_kind(model.Fault), _by_kind(scenario.FaultStep)
    # The one step that is not a fault: the server's own restart (issue 17).
    assert steps.pop(scenario.APP_RESTART).model_fields["mode"]
    assert tuple(faults) == tuple(steps) == FAULT_KINDS
    for kind in KINDS:
        assert set(faults[kind.name].model_fields) - FAULT_COMMON == set(kind.params), kind
        assert set(steps[kind.name].model_fields) - STEP_COMMON == set(kind.params), kind
        assert ("direction" in faults[kind.name].model_fields) == kind.directed, kind
        assert ("direction" in steps[kind.name].model_fields) == kind.directed, kind
        assert set(kind.params) <= set(PARAMETERS)
