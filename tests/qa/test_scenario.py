"""Scenario files: the built-in suite loads; a bad file is refused at the right line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from videochat.exceptions import NotFound, ValidationError, VideoChatError
from videochat.faults.kinds import FAULT_KINDS
from videochat.qa.scenario import (
    BUILTIN_DIR,
    LossStep,
    builtin_scenarios,
    find_scenario,
    load_scenario,
    parse_scenario,
)
from videochat.qa.scenario_errors import ScenarioError, locate

GOOD = """\
name = "x"
description = "a test scenario"
duration_s = 30

[[participants]]
name = "alice"
kind = "browser"

[[participants]]
name = "bot1"
kind = "bot"

[[timeline]]
at_s = 5
kind = "loss"
target = "alice"
percent = 20
direction = "up"
duration_s = 10

[[timeline]]
at_s = 20
kind = "kill"
target = "alice"

[chat]
messages_per_second = 2

[assertions]
reconnect_time_max_s = 3
chat_lost_max = 0
"""


def refuse(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "scenarios/x.toml")
    return info.value


def test_builtin_suite() -> None:
    suite = builtin_scenarios()
    wanted = {"blackout-8s", "kill-connection", "poor-3g", "very-bad-network",
              "call-drop-profile", "bandwidth-300kbps", "redis-outage-chat",
              "mongo-outage-metrics", "latency-spike"}
    assert wanted <= set(suite)
    for path in BUILTIN_DIR.glob("*.toml"):
        s = suite[path.stem]  # the file is named after the scenario
        assert s.duration_s < 60
        assert s.assertions.given()
        assert s.description
        assert s.summary().split()[0] == s.name


def test_good_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(GOOD)
    s = load_scenario(path)
    assert [p.kind for p in s.participants] == ["browser", "bot"]
    loss, kill = s.timeline
    assert isinstance(loss, LossStep) and loss.percent == 20 and loss.end_s == 15
    assert kill.kind == "kill" and kill.duration_s == 0
    assert s.chat is not None and s.chat.messages_per_second == 2
    assert s.assertions.given() == {"reconnect_time_max_s": 3, "chat_lost_max": 0}
    assert s.fault_windows() == [(5, 15), (20, 20)]
    assert s.room is None and s.room_for_run("20261126T004512-3fa9c1") == "qa-x-123fa9c1"
    long = parse_scenario(GOOD.replace('name = "x"', f'name = "{"a-" * 30}b"'))
    assert len(long.room_for_run("20261126T004512-3fa9c1")) == 40


def test_fault_steps_become_fault_commands() -> None:
    s = parse_scenario(GOOD)
    assert s.timeline[0].to_command("r1") == {
        "kind": "loss", "room": "r1", "participant": "alice", "duration_s": 10.0,
        "percent": 20.0, "direction": "up",
    }
    assert s.timeline[1].to_command("r1") == {"kind": "kill", "room": "r1", "participant": "alice"}


def test_fault_commands_are_accepted_by_the_fault_module() -> None:
    faults = pytest.importorskip("videochat.faults.model")
    steps = [step for s in builtin_scenarios().values() for step in s.fault_steps]
    steps += list(parse_scenario(every_kind_scenario()).timeline)
    assert {s.kind for s in steps} == set(FAULT_KINDS)
    for step in steps:
        fault = faults.parse_fault(step.to_command("qa-room"))
        assert fault.kind == step.kind and fault.room == "qa-room"
        if step.duration_s:
            assert fault.duration_s == step.duration_s
        assert fault.params() == step.parameters()


def every_kind_scenario() -> str:
    params = {"loss": "percent = 5", "latency": "ms = 100", "bandwidth": "kbps = 300"}
    text = 'name = "all"\nduration_s = 30\n[[participants]]\nname = "a"\nkind = "bot"\n'
    for kind in FAULT_KINDS:
        text += f'[[timeline]]\nat_s = 1\nkind = "{kind}"\n{params.get(kind, "")}\n'
        text += "" if kind == "kill" else "duration_s = 2\n"
        text += "" if kind.endswith("_outage") else 'target = "a"\n'
    return text + "[assertions]\nmin_fps = 5\n"


def test_every_fault_kind_is_accepted() -> None:
    s = parse_scenario(every_kind_scenario())
    assert tuple(step.kind for step in s.timeline) == FAULT_KINDS


def test_out_of_range_value_names_line_and_field() -> None:
    err = refuse(GOOD.replace("percent = 20", "percent = 150"))
    assert str(err) == (
        "scenarios/x.toml line 17, timeline[0].percent: must be between 0 and 100 (got 150)"
    )
    assert isinstance(err, ValidationError) and isinstance(err, VideoChatError)
    (p,) = err.problems
    assert (p.line, p.field) == (17, "timeline[0].percent")


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "fragment"),
    [
        ('kind = "browser"', 'kind = "robot"', 7, "participants[0].kind",
         "must be 'browser' or 'bot' (got 'robot')"),
        ("at_s = 20", 'at_s = "20"', 22, "timeline[1].at_s", "valid number"),
        ('kind = "kill"', 'kind = "explode"', 23, "timeline[1].kind",
         "unknown fault kind 'explode'"),
        ('direction = "up"', 'kbps = 5', 18, "timeline[0].kbps",
         "not a known field (loss takes: at_s, target, duration_s, percent, direction)"),
        ('target = "alice"\npercent', 'target = "bob"\npercent', 16, "timeline[0].target",
         "must be 'room' or a participant (alice, bot1) (got 'bob')"),
        ("duration_s = 10", "duration_s = 30", 19, "timeline[0].duration_s",
         "after the scenario's duration_s (30 s)"),
        ("duration_s = 10", "", 13, "timeline[0].duration_s", "is required"),
        ('target = "alice"\n\n[chat]', 'target = "alice"\nduration_s = 3\n\n[chat]', 25,
         "timeline[1].duration_s", "kill is instantaneous"),
        ("messages_per_second = 2", "messages_per_second = 0", 27,
         "chat.messages_per_second", "must be greater than 0"),
        ("[chat]\nmessages_per_second = 2", "", 30, "assertions.chat_lost_max",
         "needs chat traffic"),
        ("chat_lost_max = 0", "chat_lost_max = -1", 31, "assertions.chat_lost_max",
         "must be 0 or more"),
        ("chat_lost_max = 0", "chat_lost = 0", 31, "assertions.chat_lost", "not a known field"),
        ('name = "bot1"', 'name = "alice"', 10, "participants[1].name",
         "duplicate participant name"),
        ('name = "x"', 'name = "Bad Name"', 1, "name", "lowercase words"),
        ("duration_s = 30", "duration_s = 0", 3, "duration_s", "greater than 0"),
    ],
)
def test_bad_files_are_refused_at_line_and_field(
    old: str, new: str, line: int, field: str, fragment: str
) -> None:
    assert old in GOOD
    err = refuse(GOOD.replace(old, new, 1))
    found = [p for p in err.problems if p.field == field]
    assert found, str(err)
    assert found[0].line == line, str(err)
    assert fragment in found[0].message, str(err)
    assert f"scenarios/x.toml line {line}, {field}: " in str(err)


def test_backend_outage_must_target_the_room() -> None:
    text = GOOD.replace('kind = "kill"', 'kind = "redis_outage"\nduration_s = 4')
    err = refuse(text)
    assert [(p.line, p.field) for p in err.problems] == [(25, "timeline[1].target")]
    assert "affects the whole app" in str(err)


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("percent = 20", "percent = 150").replace('kind = "bot"', 'kind = "x"')
    err = refuse(text)
    assert {p.field for p in err.problems} == {"participants[1].kind", "timeline[0].percent"}
    assert len(str(err).splitlines()) == 2


def test_missing_sections_and_no_objectives() -> None:
    err = refuse('name = "x"\nduration_s = 5\nparticipants = []\n')
    assert "participants: must have at least 1 item (got 0)" in str(err)
    assert "line 3" in str(err)
    err = refuse('name = "x"\nduration_s = 5\n[[participants]]\nname = "a"\nkind = "bot"\n')
    assert "assertions: state at least one objective" in str(err)
    err = refuse('duration_s = 5\n[[participants]]\nname = "a"\nkind = "bot"\n'
                 '[assertions]\nmin_fps = 5\n')
    assert [p.field for p in err.problems] == ["name"]


def test_timing_objectives_need_a_fault() -> None:
    text = 'name = "x"\nduration_s = 5\n[[participants]]\nname = "a"\nkind = "bot"\n' \
           "[assertions]\nreconnect_time_max_s = 2\n"
    err = refuse(text)
    assert "line 7, assertions.reconnect_time_max_s: needs at least one fault" in str(err)


def test_toml_syntax_error_names_the_line() -> None:
    err = refuse(GOOD.replace("[[timeline]]", "[[timeline]", 1))
    (p,) = err.problems
    assert p.line == 13 and "not valid TOML" in p.message


def test_locate_handles_inline_arrays_and_multiline_values() -> None:
    text = (
        'name = "x"\n'
        'description = """\nnot = a key\n"""\n'
        "participants = [\n"
        '  {name = "a", kind = "bot"},\n'
        '  {name = "b", kind = "robot"},\n'
        "]\n"
        "duration_s = 10\n"
        "[assertions.nested]\n"
        "x = 1\n"
    )
    assert locate(text, ("participants", 1, "kind")) == 5  # the key that holds the array
    assert locate(text, ("duration_s",)) == 9
    assert locate(text, ("not",)) is None
    assert locate(text, ("assertions", "nested", "x")) == 11
    assert locate(text, ("assertions",)) == 10
    err = refuse(text)
    assert any(p.field == "participants[1].kind" and p.line == 5 for p in err.problems)


def test_find_scenario_by_name_or_path(tmp_path: Path) -> None:
    assert find_scenario("blackout-8s").name == "blackout-8s"
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    assert find_scenario(str(path)).name == "x"
    with pytest.raises(NotFound, match="blackout-8s"):
        find_scenario("no-such-scenario")
    with pytest.raises(NotFound, match="cannot read"):
        find_scenario(str(tmp_path / "absent.toml"))


def test_duplicate_builtin_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    with pytest.raises(ScenarioError, match="already used"):
        builtin_scenarios(tmp_path)


def test_names_and_rooms_satisfy_the_call_rules() -> None:
    participant = pytest.importorskip("videochat.media.participant")
    for s in builtin_scenarios().values():
        participant.validate_room_name(s.room_for_run("20261126T004512-3fa9c1"))
        for p in s.participants:
            participant.validate_display_name(p.name)


RESTART = """\
name = "restart"
duration_s = 30

[[participants]]
name = "alice"
kind = "browser"

[[timeline]]
at_s = 5
kind = "app_restart"
mode = "kill"

[assertions]
video_back_within_s = 5
"""


def test_app_restart_steps_are_not_faults() -> None:
    s = parse_scenario(RESTART)
    (step,) = s.restart_steps
    assert (step.mode, step.at_s, step.target, step.label) == (
        "kill", 5.0, "room", "app_restart (kill) at 5 s")
    assert s.fault_steps == [] and s.fault_windows() == []
    assert s.assertions.given() == {"video_back_within_s": 5}
    assert find_scenario("server-restart").restart_steps


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "fragment"),
    [
        ('mode = "kill"', 'mode = "reboot"', 11, "timeline[0].mode",
         "must be 'graceful' or 'kill' (got 'reboot')"),
        ('mode = "kill"', "", 8, "timeline[0].mode", "is required"),
        ('mode = "kill"', 'mode = "kill"\nduration_s = 3', 12, "timeline[0].duration_s",
         "app_restart is instantaneous"),
        ('mode = "kill"', 'mode = "kill"\ntarget = "alice"', 12, "timeline[0].target",
         "app_restart affects the whole app"),
        ('kind = "app_restart"\nmode = "kill"', 'kind = "loss"\npercent = 5\nduration_s = 3',
         15, "assertions.video_back_within_s", "needs at least one app_restart step"),
    ],
)
def test_bad_app_restart_steps_are_refused_at_their_line(
    old: str, new: str, line: int, field: str, fragment: str
) -> None:
    assert old in RESTART
    err = refuse(RESTART.replace(old, new, 1))
    found = [p for p in err.problems if p.field == field]
    assert found, str(err)
    assert (found[0].line, fragment in found[0].message) == (line, True), str(err)
