"""``python -m videochat qa list | run | call-report``: the QA runner's command line (a
`videochat.cli` plugin). ``call-report --room R --out f.html`` writes any call's HTML report.

``qa run NAME|FILE --report out.json`` exits 0 when every objective held, 1 when one failed or
the run could not be carried out, 2 for a bad scenario or bad usage.

With no ``--app-url``, the run starts its own app. As root it first creates a loopback-only
network namespace and re-executes itself inside it (``--inside``), so the app, its embedded
servers, Chromium and this process's own Redis/MongoDB clients all share that loopback; the
namespace and everything in it are removed afterwards, whatever happened.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from videochat.exceptions import NotFound
from videochat.qa.scenario import Scenario, builtin_scenarios, find_scenario
from videochat.qa.scenario_errors import ScenarioError

logger = logging.getLogger(__name__)

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
OUTER_MARGIN_S = 240.0
"""Beyond the scenario's duration: app start, joins, collection and cleanup, at worst."""


def register(commands: Any) -> None:
    qa = commands.add_parser("qa", help="QA scenarios: list them, run one with a verdict")
    verbs = qa.add_subparsers(dest="verb", metavar="VERB", required=True)

    lst = verbs.add_parser("list", help="built-in scenarios, one a line, name first")
    lst.set_defaults(func=cmd_list)

    run = verbs.add_parser("run", help="run a scenario; exit 0 pass, 1 fail, 2 bad scenario")
    run.add_argument("scenario", help="a built-in scenario's name or a .toml file")
    run.add_argument("--report", type=Path,
                     help="JSON report path (HTML beside it); default: "
                          "<state dir>/qa-reports/<run id>.json")
    run.add_argument("--room", help="room to run in (default: a fresh room per run)")
    run.add_argument("--app-url", help="use this running app (e.g. http://127.0.0.1:8501)")
    run.add_argument("--state-dir", type=Path,
                     help="state folder of the app given by --app-url (its embedded servers)")
    run.add_argument("--app-state", type=Path,
                     help="state folder for the app this run starts "
                          "(default: <state dir>/qa-app, or a temporary one if busy)")
    run.add_argument("--port", type=int, default=8599, help="port of the app this run starts")
    run.add_argument("--no-isolate", action="store_true",
                     help="do not use a network namespace even as root")
    run.add_argument("--no-store", action="store_true", help="do not store the run in MongoDB")
    run.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    report = verbs.add_parser("call-report",
                              help="HTML report (charts, events, KPIs) of any recorded call")
    report.add_argument("--room", required=True, help="the room")
    report.add_argument("--call", help="one call id (default: the room's whole history)")
    report.add_argument("--out", type=Path, required=True, help="HTML file to write")
    report.set_defaults(func=cmd_call_report)


def cmd_list(args: argparse.Namespace) -> int:
    try:
        scenarios = builtin_scenarios()
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for s in scenarios.values():
        print(s.summary())
    return EXIT_PASS


def cmd_call_report(args: argparse.Namespace) -> int:
    """Write the call's HTML report and print its KPIs as one JSON line."""
    import json

    from videochat.backends.services import Services
    from videochat.qa.report import call_report
    from videochat.settings import Settings

    services = Services.from_settings(Settings.load())
    try:
        report = call_report(services.db, args.room, args.call)
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.html(), encoding="utf-8")
    print(json.dumps(report.summary(), default=str), flush=True)
    return EXIT_PASS


def _load(arg: str) -> Scenario | None:
    try:
        return find_scenario(arg)
    except (ScenarioError, NotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    scenario = _load(args.scenario)
    if scenario is None:
        return EXIT_USAGE
    if args.app_url is None and not args.inside and not args.no_isolate:
        from videochat.qa.harness import netns_available

        if netns_available():
            return _run_isolated(args, scenario)
    return _run_here(args, scenario)


def _progress(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def _run_here(args: argparse.Namespace, scenario: Scenario) -> int:
    from videochat.qa.runner import RunOptions, run_scenario
    from videochat.settings import Settings

    logging.getLogger("videochat").setLevel(logging.INFO)
    settings = Settings.load()
    source = None if scenario.name == args.scenario else str(args.scenario)
    options = RunOptions(report=args.report, room=args.room, app_url=args.app_url,
                         port=args.port, store=not args.no_store, progress=_progress)
    if args.app_url is not None:
        options.state_dir = args.state_dir or settings.state_dir
        result = run_scenario(scenario, options, settings=settings, source=source)
    else:
        with _app_state(args.app_state, settings.state_dir) as state:
            options.state_dir = state
            result = run_scenario(scenario, options, settings=settings, source=source)
    _print_verdicts(result)
    return EXIT_PASS if result.passed else EXIT_FAIL


@contextmanager
def _app_state(given: Path | None, base: Path) -> Iterator[Path]:
    """The state folder of a self-started app: one kept between runs (so run history stays),
    locked; a temporary one when another run holds it."""
    if given is not None:
        yield given.resolve()
        return
    keep = (base / "qa-app").resolve()
    keep.mkdir(parents=True, exist_ok=True)
    lock: IO[str] = open(keep / "run.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            with tempfile.TemporaryDirectory(prefix="vc-qa-app-") as tmp:
                yield Path(tmp)
            return
        yield keep
    finally:
        lock.close()


def _print_verdicts(result: Any) -> None:
    for r in result.results:
        mark = "PASS" if r.passed else "FAIL"
        print(f"  {mark}  {r.name}: {r.detail}")
    if result.error:
        print(f"  run error: {result.error}")
    print(f"{result.scenario.name}: {'passed' if result.passed else 'FAILED'} "
          f"(run {result.run_id}, room {result.room})", flush=True)


def _run_isolated(args: argparse.Namespace, scenario: Scenario) -> int:
    """Re-run this command inside a fresh loopback-only namespace, bounded in time."""
    from videochat.qa.harness import NetNamespace

    argv = ["qa", "run", str(args.scenario), "--port", str(args.port), "--inside"]
    for flag, value in (("--report", args.report), ("--room", args.room),
                        ("--app-state", args.app_state)):
        if value is not None:
            argv += [flag, str(Path(value).resolve()) if isinstance(value, Path) else value]
    if args.no_store:
        argv.append("--no-store")
    budget = scenario.duration_s + OUTER_MARGIN_S
    with NetNamespace() as ns:
        _progress(f"network namespace {ns.name}: running {scenario.name} inside it")
        cmd = [*ns.prefix(), sys.executable, "-m", "videochat", *argv]
        try:
            return subprocess.run(cmd, timeout=budget).returncode
        except subprocess.TimeoutExpired:
            print(f"error: the run did not finish within {budget:.0f} s; stopped",
                  file=sys.stderr)
            return EXIT_FAIL
