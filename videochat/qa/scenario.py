"""QA scenarios as code: who joins, which faults hit them when, and what must hold afterwards.

A scenario is a TOML file in `scenarios/` (see `scenarios/blackout-8s.toml`)::

    name = "blackout-8s"
    description = "..."
    duration_s = 30
    # room = "qa-room"            optional; by default the runner makes one per run

    [[participants]]
    name = "alice"
    kind = "browser"              # headless Chromium with a fake camera, or "bot"

    [chat]                        # optional chat traffic during the run
    messages_per_second = 2       # senders = [...] optional; default every participant

    [[timeline]]                  # faults: videochat.faults.model' kinds and parameter names
    at_s = 5
    kind = "blackout"
    target = "alice"              # a participant, or "room" for all of them
    duration_s = 8

    [assertions]                  # the objectives; at least one, only those given are checked
    reconnect_time_max_s = 3

Fault kinds and their parameters: loss (percent, direction), latency (ms, jitter_ms, direction),
bandwidth (kbps, direction), blackout (direction), kill (no duration), freeze_video, black_video,
redis_outage and mongo_outage (target "room" only). Direction is "up", "down" or "both".
Beside the faults, `app_restart` (mode "graceful" or "kill", no duration, target "room"): the
runner restarts the app it started (see `AppRestartStep`).

A bad file is refused with one `ScenarioError` listing every problem as
"scenarios/x.toml line 12, timeline[1].percent: must be between 0 and 100 (got 150)".
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from videochat.exceptions import NotFound
from videochat.faults.kinds import (
    BACKEND_KINDS,
    JITTER_MS_RANGE,
    KBPS_RANGE,
    LATENCY_MS_RANGE,
    MAX_DURATION_S,
    OUTAGE_MAX_S,
    PERCENT_RANGE,
    Direction,
)
from videochat.qa.scenario_errors import (
    Loc,
    ScenarioError,
    ScenarioProblem,
    clean_loc,
    field_name,
    locate,
    problem_message,
)

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "scenarios"
ROOM_TARGET = "room"

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_PARTICIPANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_ROOM = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # participant.validate_room_name's rule


# ---------------------------------------------------------------------------------------------
# value checks with readable messages (pydantic's own bound errors name one bound only)


def _between(lo: float, hi: float) -> AfterValidator:
    def check(v: float) -> float:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return v

    return AfterValidator(check)


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be greater than 0")
    return v


def _non_negative(v: float) -> float:
    if v < 0:
        raise ValueError("must be 0 or more")
    return v


def _zero(v: float) -> float:
    if v != 0:
        raise ValueError("kill is instantaneous: leave duration_s out")
    return v


def _matches(pattern: re.Pattern[str], rule: str) -> AfterValidator:
    def check(v: str) -> str:
        if not pattern.match(v):
            raise ValueError(rule)
        return v

    return AfterValidator(check)


Seconds = Annotated[float, _between(0, MAX_DURATION_S)]
PositiveSeconds = Annotated[float, AfterValidator(_positive), _between(0, MAX_DURATION_S)]
NonNegative = Annotated[float, AfterValidator(_non_negative)]
NonNegativeInt = Annotated[int, AfterValidator(_non_negative)]
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# participants, chat, faults, assertions


class ParticipantSpec(_Model):
    name: Annotated[
        str, _matches(_PARTICIPANT, "must be 1-32 letters, digits, '_', '.' or '-'")
    ]
    kind: Literal["browser", "bot"]


class ChatTraffic(_Model):
    messages_per_second: Annotated[float, AfterValidator(_positive), _between(0, 50)]
    senders: Annotated[tuple[str, ...], Field(strict=False)] = ()
    """Who sends; empty means every participant in turn."""


class _Step(_Model):
    kind: str
    at_s: Seconds
    target: str = ROOM_TARGET
    duration_s: float = 0.0

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def parameters(self) -> dict[str, Any]:
        """The kind-specific parameters, named as in `python -m videochat faults inject`."""
        skip = {"at_s", "target", "duration_s", "kind"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}

    def to_command(self, room: str) -> dict[str, Any]:
        """The fault command of `videochat.faults.model.parse_fault` (issue 5) for this step."""
        cmd: dict[str, Any] = {"kind": self.kind, "room": room}
        if self.target != ROOM_TARGET:
            cmd["participant"] = self.target
        if self.duration_s > 0:
            cmd["duration_s"] = self.duration_s
        cmd.update(self.parameters())
        return cmd


class _TimedStep(_Step):
    duration_s: PositiveSeconds


class LossStep(_TimedStep):
    kind: Literal["loss"]
    percent: Annotated[float, AfterValidator(_positive), _between(*PERCENT_RANGE)]
    direction: Direction = "both"


class LatencyStep(_TimedStep):
    kind: Literal["latency"]
    ms: Annotated[float, _between(*LATENCY_MS_RANGE)]
    jitter_ms: Annotated[float, _between(*JITTER_MS_RANGE)] = 0.0
    direction: Direction = "both"


class BandwidthStep(_TimedStep):
    kind: Literal["bandwidth"]
    kbps: Annotated[float, _between(*KBPS_RANGE)]
    direction: Direction = "both"


class BlackoutStep(_TimedStep):
    kind: Literal["blackout"]
    direction: Direction = "both"


class KillStep(_Step):
    """Closes the server-side peer connection at once; there is nothing to revert."""

    kind: Literal["kill"]
    duration_s: Annotated[float, AfterValidator(_zero)] = 0.0


class FreezeVideoStep(_TimedStep):
    kind: Literal["freeze_video"]


class BlackVideoStep(_TimedStep):
    kind: Literal["black_video"]


class RedisOutageStep(_TimedStep):
    kind: Literal["redis_outage"]
    duration_s: Annotated[PositiveSeconds, _between(0, OUTAGE_MAX_S)]


class MongoOutageStep(_TimedStep):
    kind: Literal["mongo_outage"]
    duration_s: Annotated[PositiveSeconds, _between(0, OUTAGE_MAX_S)]


RESTART_MODES = ("graceful", "kill")


def _instant(v: float) -> float:
    if v != 0:
        raise ValueError("app_restart is instantaneous: leave duration_s out")
    return v


class AppRestartStep(_Step):
    """Not a fault of the network but of the server itself (issue 17): the runner stops the app
    it started and starts it again from the same folder, `graceful` (SIGTERM, a deploy) or
    `kill` (SIGKILL, a crash). Only with an app the runner started (no `--app-url`)."""

    kind: Literal["app_restart"]
    mode: Literal["graceful", "kill"]
    duration_s: Annotated[float, AfterValidator(_instant)] = 0.0

    @property
    def label(self) -> str:
        return f"app_restart ({self.mode}) at {self.at_s:g} s"


FaultStep = Annotated[
    LossStep | LatencyStep | BandwidthStep | BlackoutStep | KillStep | FreezeVideoStep
    | BlackVideoStep | RedisOutageStep | MongoOutageStep | AppRestartStep,
    Field(discriminator="kind"),
]
APP_RESTART = "app_restart"


class Assertions(_Model):
    """Recovery objectives; None means "not checked in this scenario"."""

    reconnect_time_max_s: NonNegative | None = None
    quality_step_down_max_s: NonNegative | None = None
    back_to_full_quality_max_s: NonNegative | None = None
    chat_lost_max: NonNegativeInt | None = None
    chat_duplicated_max: NonNegativeInt | None = None
    min_fps: NonNegative | None = None
    max_rtt_ms: NonNegative | None = None
    video_resumed_after_fault_max_s: NonNegative | None = None
    metrics_lost_max: NonNegativeInt | None = None
    video_back_within_s: NonNegative | None = None
    """After each app_restart: the new process answering its health check → every browser's
    remote video moving again (its third new frame)."""
    # During faults, as people saw it (definitions in docs/TESTING.md and qa/assertions.py).
    min_fps_during_faults: NonNegative | None = None
    max_freeze_s: NonNegative | None = None
    max_reconnects: NonNegativeInt | None = None

    def given(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Scenario(_Model):
    name: Annotated[str, _matches(_NAME, "must be lowercase words joined by '-'")]
    description: str = ""
    room: Annotated[str, _matches(_ROOM, "must be 1-40 letters, digits, '_' or '-'")] | None = None
    duration_s: PositiveSeconds
    # TOML arrays arrive as lists; tuples keep the frozen model hashable and immutable.
    participants: Annotated[
        tuple[ParticipantSpec, ...], Field(min_length=1, max_length=16, strict=False)
    ]
    timeline: Annotated[tuple[FaultStep, ...], Field(strict=False)] = ()
    chat: ChatTraffic | None = None
    assertions: Assertions = Assertions()

    def room_for_run(self, run_id: str) -> str:
        """The scenario's room, or one of its own per run (run ids end in their random part)."""
        if self.room:
            return self.room
        suffix = re.sub(r"[^A-Za-z0-9]", "", run_id)[-8:]
        return f"qa-{self.name[: 40 - 4 - len(suffix)]}-{suffix}"

    def participant(self, name: str) -> ParticipantSpec:
        for p in self.participants:
            if p.name == name:
                return p
        raise NotFound(f"scenario {self.name!r} has no participant {name!r}")

    @property
    def fault_steps(self) -> list[FaultStep]:
        """The timeline without its app restarts (which the runner performs itself)."""
        return [s for s in self.timeline if s.kind != APP_RESTART]

    @property
    def restart_steps(self) -> list[AppRestartStep]:
        return [s for s in self.timeline if isinstance(s, AppRestartStep)]

    def fault_windows(self) -> list[tuple[float, float]]:
        """Planned (start, end) of each fault, seconds from the run's start."""
        return [(s.at_s, s.end_s) for s in self.fault_steps]

    def summary(self) -> str:
        """One line for `qa list`: the name first."""
        kinds = ",".join(s.kind for s in self.timeline) or "no faults"
        who = "+".join(p.kind for p in self.participants)
        return f"{self.name}  {self.duration_s:g}s  {who}  [{kinds}]  {self.description}"


# ---------------------------------------------------------------------------------------------
# cross-field rules, each placed on the field at fault


def _semantic_problems(s: Scenario) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    names = [p.name for p in s.participants]
    for i, name in enumerate(names):
        if name in names[:i]:
            out.append((("participants", i, "name"), f"duplicate participant name {name!r}"))
        if name == ROOM_TARGET:
            out.append((("participants", i, "name"), f"{ROOM_TARGET!r} is reserved for the room"))
    for i, step in enumerate(s.timeline):
        if step.target != ROOM_TARGET and step.target not in names:
            out.append((
                ("timeline", i, "target"),
                f"must be {ROOM_TARGET!r} or a participant ({', '.join(dict.fromkeys(names))}) "
                f"(got {step.target!r})",
            ))
        if (step.kind in BACKEND_KINDS or step.kind == APP_RESTART) \
                and step.target != ROOM_TARGET:
            out.append((
                ("timeline", i, "target"),
                f"{step.kind} affects the whole app: target must be {ROOM_TARGET!r}",
            ))
        if step.end_s > s.duration_s:
            field = "duration_s" if step.duration_s else "at_s"
            out.append((
                ("timeline", i, field),
                f"fault ends at {step.end_s:g} s, after the scenario's duration_s "
                f"({s.duration_s:g} s)",
            ))
    if s.chat is not None:
        for i, sender in enumerate(s.chat.senders):
            if sender not in names:
                out.append((("chat", "senders", i), f"{sender!r} is not a participant"))
    a = s.assertions
    if s.chat is None:
        for key in ("chat_lost_max", "chat_duplicated_max"):
            if getattr(a, key) is not None:
                out.append((("assertions", key), "needs chat traffic: add a [chat] table"))
    if not a.given():
        out.append((("assertions",), "state at least one objective: a run needs a verdict"))
    if a.video_back_within_s is not None and not s.restart_steps:
        out.append((("assertions", "video_back_within_s"),
                    "needs at least one app_restart step in [[timeline]]"))
    if not s.timeline:
        for key in ("reconnect_time_max_s", "quality_step_down_max_s",
                    "back_to_full_quality_max_s", "video_resumed_after_fault_max_s"):
            if getattr(a, key) is not None:
                out.append((("assertions", key), "needs at least one fault in [[timeline]]"))
    return out

def _extra_hint(loc: Loc, raw: dict[str, Any]) -> str:
    """For an unknown field, say which fields the table does take."""
    node: Any = raw
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return ""
    if loc[:1] == ("timeline",) and isinstance(node, dict):
        kind = node.get("kind")
        cls = _STEP_BY_KIND.get(kind) if isinstance(kind, str) else None
        if cls is not None:
            allowed = [f for f in cls.model_fields if f != "kind"]
            return f" ({kind} takes: {', '.join(allowed)})"
    return ""


_STEP_BY_KIND: dict[str, type[_Step]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls
    for cls in (LossStep, LatencyStep, BandwidthStep, BlackoutStep, KillStep, FreezeVideoStep,
                BlackVideoStep, RedisOutageStep, MongoOutageStep, AppRestartStep)
}


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate a scenario from TOML text; raises ScenarioError naming each line and field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ScenarioError(source, [ScenarioProblem(
            source, int(m.group(1)) if m else None, "", f"not valid TOML: {exc}")]) from exc
    try:
        scenario = Scenario.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = []
        errors = exc.errors()
        for err in errors:
            loc = clean_loc(tuple(err["loc"]))
            if err["type"] == "too_short" and any(
                len(o["loc"]) > len(err["loc"]) and o["loc"][: len(err["loc"])] == err["loc"]
                for o in errors
            ):
                continue  # the items' own errors emptied the list; those are what to fix
            msg = problem_message(err)
            if err["type"] == "extra_forbidden":
                msg += _extra_hint(loc, raw)
            elif err["type"].startswith("union_tag"):
                loc += ("kind",)
            problems.append(ScenarioProblem(source, locate(text, loc), field_name(loc), msg))
        raise ScenarioError(source, problems) from exc
    semantic = _semantic_problems(scenario)
    if semantic:
        raise ScenarioError(source, [
            ScenarioProblem(source, locate(text, loc), field_name(loc), msg)
            for loc, msg in semantic
        ])
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotFound(f"cannot read scenario file {path}: {exc.strerror}") from exc
    return parse_scenario(text, str(path))


def builtin_scenarios(directory: Path | None = None) -> dict[str, Scenario]:
    """Every `*.toml` of the built-in folder, by name; a broken one raises (it is our bug)."""
    folder = directory or BUILTIN_DIR
    out: dict[str, Scenario] = {}
    for path in sorted(folder.glob("*.toml")):
        s = load_scenario(path)
        if s.name in out:
            raise ScenarioError(str(path), [ScenarioProblem(
                str(path), locate(path.read_text(encoding="utf-8"), ("name",)), "name",
                f"{s.name!r} is already used by another built-in scenario")])
        out[s.name] = s
    return out


def find_scenario(name_or_path: str, directory: Path | None = None) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    if name_or_path.endswith(".toml") or Path(name_or_path).is_file():
        return load_scenario(name_or_path)
    found = builtin_scenarios(directory)
    if name_or_path not in found:
        raise NotFound(
            f"no scenario {name_or_path!r}; built-in: {', '.join(sorted(found)) or 'none'}"
        )
    return found[name_or_path]
