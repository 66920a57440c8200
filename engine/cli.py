"""``inception-engine`` command line: one command, one subcommand per job.

Each subcommand lives in ``engine/commands/<name>.py`` and exposes ``register(subparsers)``
which adds its parser and sets ``func``. Heavy imports happen inside the handlers.

Errors: this package's own (:class:`engine.errors.EngineError` and its subclasses, which
calibration's errors extend) say what is wrong and what to do, so they are printed as one
``inception-engine: error: ...`` message with exit status 2, as argparse does for a bad
option. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["models", "run", "export", "verify", "quantize", "study", "build", "bench",
            "serve_export"]
ERROR_STATUS = 2


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inception-engine",
                                description="Inception-v4 / Inception-ResNet inference engine")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"engine.commands.{name}").register(sub)
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
        return ERROR_STATUS
    try:
        return int(args.func(args) or 0)
    except EngineError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
