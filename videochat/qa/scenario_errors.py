"""What is wrong with a scenario file, and on which line: pydantic gives a field path, people
need a line of the TOML text.

`ScenarioError` lists every `ScenarioProblem` as
"scenarios/x.toml line 12, timeline[1].percent: must be between 0 and 100 (got 150)";
`videochat/qa/scenario.py` (the schema) raises it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from videochat.exceptions import ValidationError
from videochat.faults.kinds import FAULT_KINDS

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class ScenarioProblem:
    """One thing wrong with a scenario file; `line` is 1-based, None when it cannot be placed."""

    source: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source} line {self.line}" if self.line else self.source
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}, {self.field}: {self.message}"


class ScenarioError(ValidationError):
    """A scenario file that cannot be used; `problems` holds each fault with its line and field."""

    def __init__(self, source: str, problems: Sequence[ScenarioProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("scenario", source, "; ".join(str(p) for p in self.problems))
        # ValidationError's generic wording hides the line; people read this message first.
        self.args = ("\n".join(str(p) for p in self.problems),)

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# TOML line locator: pydantic gives a field path, people need a line


def _strip_key(k: str) -> str:
    k = k.strip()
    if len(k) >= 2 and k[0] == k[-1] and k[0] in "\"'":
        return k[1:-1]
    return k


def _split_dotted(s: str) -> list[str]:
    parts, cur, quote = [], "", ""
    for ch in s:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            cur += ch
        elif ch == ".":
            parts.append(_strip_key(cur))
            cur = ""
        else:
            cur += ch
    parts.append(_strip_key(cur))
    return parts


def _bracket_delta(value: str) -> int:
    """Net open brackets in a value, ignoring strings and comments."""
    depth, quote = 0, ""
    for ch in value:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def toml_positions(text: str) -> list[tuple[Loc, int]]:
    """Every table header and key of a TOML text as (path with array indices, 1-based line)."""
    out: list[tuple[Loc, int]] = []
    arrays: dict[Loc, int] = {}
    table: Loc = ()
    depth = 0
    in_multiline = ""
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_multiline:
            if in_multiline in line:
                in_multiline = ""
            continue
        if depth > 0:
            depth += _bracket_delta(line)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            is_array = line.startswith("[[")
            inner = line[2:line.index("]]")] if is_array else line[1:line.index("]")]
            resolved: list[str | int] = []
            parts = _split_dotted(inner)
            for j, part in enumerate(parts):
                resolved.append(part)
                last = j == len(parts) - 1
                if last and is_array:
                    arrays[tuple(resolved)] = arrays.get(tuple(resolved), -1) + 1
                if tuple(resolved) in arrays:
                    resolved.append(arrays[tuple(resolved)])
            table = tuple(resolved)
            out.append((table, n))
            continue
        if "=" in line:
            key, _, value = line.partition("=")
            out.append((table + tuple(_split_dotted(key)), n))
            value = value.strip()
            for q in ('"""', "'''"):
                if value.startswith(q) and value.count(q) == 1:
                    in_multiline = q
            depth = max(0, _bracket_delta(value))
    return out


def locate(text: str, loc: Loc) -> int | None:
    """The line of the deepest header or key that `loc` lies under; None when nothing matches."""
    best: tuple[int, int] | None = None
    positions = toml_positions(text)
    for path, line in positions:
        if len(path) <= len(loc) and tuple(loc[: len(path)]) == path and path:
            if best is None or len(path) > best[0]:
                best = (len(path), line)
    if best is None and loc:
        # A whole array of tables ("participants",) is named by its first header.
        for path, line in positions:
            if path[: len(loc)] == loc:
                return line
    return best[1] if best else None


def field_name(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


STEP_KINDS = (*FAULT_KINDS, "app_restart")  # a scenario step: a fault, or the app's restart


def clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's discriminator tags ("timeline", 1, "loss", "percent") -> without "loss"."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if part in STEP_KINDS and i > 0 and isinstance(loc[i - 1], int):
            continue
        out.append(part)
    return tuple(out)


def problem_message(err: Any) -> str:
    kind = err["type"]
    given = err.get("input")
    msg = str(err["msg"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "union_tag_invalid":
        return (f"unknown fault kind {err['ctx']['tag']!r} (known: {', '.join(FAULT_KINDS)}; "
                "and app_restart)")
    if kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        n = err["ctx"]["min_length" if kind == "too_short" else "max_length"]
        return f"must have {bound} {n} item{'s' if n != 1 else ''} (got {len(given)})"
    if kind == "union_tag_not_found":
        return f"needs a kind ({', '.join(FAULT_KINDS)}, or app_restart)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be "):]
    return f"{msg} (got {given!r})" if kind not in ("model_type", "dict_type") else msg
