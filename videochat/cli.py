"""The command line: ``python -m videochat faults …`` and ``… qa …``, command groups found by name.

Each command group lives in its own module (`PLUGINS`: `videochat/faults/cli.py`,
`videochat/qa/cli.py`): a module exposing ``register(subparsers) -> None`` that adds its parser
and sets ``func`` (args → exit code) with ``set_defaults``. If the module is missing, the command
says so and exits 2.

Exit codes: 0 done; 2 bad arguments or a refused fault; 3 unknown room or participant;
4 a backend cannot be reached.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis

from videochat.exceptions import (
    BackendUnavailable,
    InvalidFaultCommand,
    NotFound,
    SettingsError,
    VideoChatError,
)

logger = logging.getLogger(__name__)

PLUGINS = {"faults": "videochat.faults.cli", "qa": "videochat.qa.cli"}

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BACKEND = 0, 2, 3, 4

Handler = Callable[[argparse.Namespace], int]


class CliError(VideoChatError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m videochat",
                                     description="Video chat tools: fault injection, QA runs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in PLUGINS.items():
        _add_plugin(commands, name, module)
    return parser


def _add_plugin(commands: Any, name: str, module: str) -> None:
    try:
        plugin = importlib.import_module(module)
        register = plugin.register
    except (ImportError, AttributeError):
        sub = commands.add_parser(name, help=f"({module} is not installed)")
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(func=lambda args: _missing_plugin(name, module))
        return
    register(commands)


def _missing_plugin(name: str, module: str) -> int:
    print(f"error: the '{name}' command is not available: {module} does not provide "
          "register(subparsers)", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except InvalidFaultCommand as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BackendUnavailable, redis.RedisError) as exc:
        print(f"error: Redis cannot be reached: {exc}", file=sys.stderr)
        return EXIT_BACKEND
