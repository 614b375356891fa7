"""``python -m videochat faults inject | list | stop | clear | presets`` (a `videochat.cli` plugin).

Run from the app's folder it reaches the same Redis and MongoDB as the running app through
`Settings.load()` (environment + ``.streamlit/secrets.toml``) and, for embedded servers, the
discovery file in the state folder. It never starts servers of its own: a fault sent to servers
nobody else uses would reach no call. Parameter flags come from `videochat/faults/kinds.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from videochat.cli import EXIT_BACKEND, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from videochat.exceptions import (
    InvalidFaultCommand,
    NotFound,
)
from videochat.faults.kinds import BACKEND_KINDS, DIRECTIONS, FAULT_KINDS, PARAMETERS
from videochat.faults.model import ALL_ROOMS, PRESETS, Fault, expand_preset, parse_fault

logger = logging.getLogger(__name__)

# CLI flag for each fault field, so errors name what the user typed.
FLAGS = {**{p.name: p.flag for p in PARAMETERS.values()},
         "duration_s": "--duration", "direction": "--direction", "room": "--room",
         "participant": "--participant", "kind": "--kind"}


def register(commands: Any) -> None:
    faults = commands.add_parser("faults", help="inject, list and clear faults in live calls")
    verbs = faults.add_subparsers(dest="verb", metavar="VERB", required=True)

    inject = verbs.add_parser("inject", help="start a fault (or a preset) on a room/participant")
    inject.add_argument("--room", help="room name (not needed for redis/mongo outages)")
    inject.add_argument("--participant", help="display name; omit for the whole room")
    what = inject.add_mutually_exclusive_group(required=True)
    what.add_argument("--kind", choices=FAULT_KINDS, help="fault kind")
    what.add_argument("--preset", choices=sorted(PRESETS), help="network profile or scenario")
    for param in PARAMETERS.values():
        inject.add_argument(param.flag, dest=param.name, type=float, help=param.help)
    inject.add_argument("--duration", type=float, help="seconds (default 30; kill: instant)")
    inject.add_argument("--direction", choices=DIRECTIONS,
                        help="up: what the participant sends; down: what they receive")
    inject.add_argument("--wait", type=float, default=2.0,
                        help="seconds to wait for app processes to acknowledge (default 2)")
    inject.add_argument("--force", action="store_true",
                        help="do not check that the room/participant is present now")
    inject.set_defaults(func=_explaining(cmd_inject))

    lst = verbs.add_parser("list", help="active faults with target, since, until")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_explaining(cmd_list))

    clear = verbs.add_parser("clear", help="end every fault, or those of one room")
    clear.add_argument("--room", help="only this room")
    clear.set_defaults(func=_explaining(cmd_clear))

    stop = verbs.add_parser("stop", help="end one fault by id")
    stop.add_argument("fault_id")
    stop.set_defaults(func=_explaining(cmd_stop))

    presets = verbs.add_parser("presets", help="list the presets")
    presets.set_defaults(func=_explaining(cmd_presets))


# --- wiring ------------------------------------------------------------------------------------

def _control() -> Any:
    """A FaultControl on the app's backends, without starting any server."""
    from videochat.backends.embedded import EmbeddedServers, pid_alive
    from videochat.backends.services import Services
    from videochat.faults.control import control_from_services
    from videochat.settings import Settings

    settings = Settings.load()
    if settings.embedded_redis or settings.embedded_mongo:
        discovery = EmbeddedServers(settings.state_dir).discovery
        try:
            known = json.loads(discovery.read_text())
        except (OSError, ValueError):
            known = {}
        for name, embedded in (("redis", settings.embedded_redis),
                               ("mongo", settings.embedded_mongo)):
            pid = known.get(name, {}).get("pid") if isinstance(known, dict) else None
            if embedded and not (isinstance(pid, int) and pid_alive(pid)):
                raise CliError(
                    f"no running embedded {name} server found in {discovery} — start the app "
                    "from this folder first, or set REDIS_URL / MONGODB_URI", EXIT_BACKEND)
    services = Services.from_settings(settings)
    return control_from_services(services, by="cli")


def _check_target(control: Any, room: str, participant: str | None) -> None:
    from videochat.call.presence import Presence

    presence = Presence(control.redis)
    people = presence.participants(room)
    if not people:
        rooms = presence.rooms()
        known = ", ".join(rooms) if rooms else "none"
        raise CliError(f"unknown room {room!r}: nobody is in it (rooms with people: {known}); "
                       "use --force to send anyway", EXIT_NOT_FOUND)
    names = sorted({p.name for p in people.values()})
    if participant is not None and participant not in names:
        raise CliError(f"unknown participant {participant!r} in room {room!r} "
                       f"(present: {', '.join(names)}); use --force to send anyway",
                       EXIT_NOT_FOUND)


Handler = Callable[[argparse.Namespace], int]


def _explaining(cmd: Handler) -> Handler:
    """A refused fault exits 2 with the flag the user typed named first."""
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except InvalidFaultCommand as exc:
            raise CliError(_explain(exc), EXIT_USAGE) from exc

    return run


def _explain(exc: InvalidFaultCommand) -> str:
    field = exc.value if exc.what == "fault field" else exc.what.removeprefix("fault ")
    flag = FLAGS.get(str(field))
    return f"{flag}: {exc}" if flag else str(exc)


def faults_from_args(args: argparse.Namespace) -> list[Fault]:
    """Validated faults for `faults inject` (no I/O): one, or a preset's several."""
    kinds = {args.kind} if args.kind else {f["kind"] for f in PRESETS[args.preset].faults}
    room = args.room
    if room is None:
        if not kinds <= BACKEND_KINDS:
            raise InvalidFaultCommand("fault field", "room", "is required for this kind")
        room = ALL_ROOMS
    if args.preset:
        for param in PARAMETERS.values():
            if getattr(args, param.name) is not None:
                raise InvalidFaultCommand("fault field", param.flag.removeprefix("--"),
                                          f"cannot be combined with --preset {args.preset}")
        return expand_preset(args.preset, room, args.participant, args.duration,
                             args.direction)
    data: dict[str, Any] = {"kind": args.kind, "room": room}
    for flag, name in (("participant", "participant"), *((p, p) for p in PARAMETERS),
                       ("duration", "duration_s"), ("direction", "direction")):
        value = getattr(args, flag)
        if value is not None:
            data[name] = value
    return [parse_fault(data)]


# --- commands ----------------------------------------------------------------------------------

def cmd_inject(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    faults = faults_from_args(args)
    control = _control()
    targeted = [f for f in faults if f.kind not in BACKEND_KINDS]
    if targeted and not args.force:
        _check_target(control, targeted[0].room, targeted[0].participant)
    sent = control.inject_many(faults)
    cmd = control.last_cmd_id
    for f in sent:
        span = "now" if f.kind == "kill" else f"for {f.duration_s:g} s"
        print(f"injected {f.describe()} {span}: id {f.id}", file=out)
    if args.wait <= 0 or cmd is None:
        return EXIT_OK
    listeners = control.listeners()
    if not listeners:
        print("warning: no app process is listening for fault commands; the fault is "
              "recorded and applies to processes that start before it ends", file=out)
        return EXIT_OK
    acks = control.wait_acks(cmd, args.wait, expect=len(listeners))
    refused = {n: a for n, a in acks.items() if not a.get("ok")}
    for node, ack in sorted(acks.items()):
        state = "applied" if ack.get("ok") else f"REFUSED: {ack.get('error')}"
        print(f"  {node}: {state} ({ack.get('legs', 0)} media legs there)", file=out)
    missing = sorted(set(listeners) - set(acks))
    if missing:
        print(f"warning: no acknowledgement within {args.wait:g} s from {', '.join(missing)}",
              file=out)
    return EXIT_USAGE if refused else EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    control = _control()
    records = control.active()
    now = time.time()
    if args.json:
        print(json.dumps([{
            "id": r.fault.id, "kind": r.fault.kind, "room": r.fault.room,
            "participant": r.fault.participant,
            "direction": getattr(r.fault, "direction", None), "params": r.fault.params(),
            "preset": r.fault.preset, "since": r.since, "until": r.until,
            "remaining_s": round(r.remaining(now), 1), "applied_by": r.applied_by,
        } for r in records], indent=2), file=out)
        return EXIT_OK
    if not records:
        print("no active faults", file=out)
        return EXIT_OK
    rows = [("ID", "KIND", "ROOM", "PARTICIPANT", "DIR", "PARAMS", "LEFT", "APPLIED BY")]
    for r in records:
        params = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.fault.params().items() if k != "direction")
        rows.append((r.fault.id, r.fault.kind, r.fault.room, r.fault.participant or "(all)",
                     getattr(r.fault, "direction", "-"), params or "-",
                     f"{r.remaining(now):.0f}s", ",".join(r.applied_by) or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
    return EXIT_OK


def cmd_clear(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    control = _control()
    ids = control.clear(args.room)
    where = f" in room {args.room!r}" if args.room else ""
    print(f"cleared {len(ids)} fault(s){where}" + (f": {', '.join(ids)}" if ids else ""),
          file=out)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    control = _control()
    if not control.stop(args.fault_id):
        raise NotFound(f"no active fault with id {args.fault_id!r} (see: faults list)")
    print(f"stopped {args.fault_id}", file=out)
    return EXIT_OK


def cmd_presets(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    for p in PRESETS.values():
        print(f"{p.name:22} {p.description}", file=out)
    return EXIT_OK


# --- entry -------------------------------------------------------------------------------------
