"""``inception-engine`` command line: one command, one subcommand per job.

Each subcommand lives in ``engine/commands/<name>.py`` and exposes ``register(subparsers)``
which adds its parser and sets ``func``. Heavy imports happen inside the handlers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["models", "run", "export", "verify", "quantize", "study", "build", "bench",
            "serve_export"]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inception-engine",
                                description="Inception-v4 / Inception-ResNet inference engine")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"engine.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"engine.commands.{name}":
                continue  # subcommand not shipped in this build
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    from .errors import EngineError
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .version import __version__
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (EngineError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
