"""``inception-engine`` command line: one command, one subcommand per job.

Each subcommand lives in ``engine/commands/<name>.py`` and exposes ``register(subparsers)``
which adds its parser and sets ``func``. Heavy imports happen inside the handlers.

Errors: a bad option and this package's own errors (:class:`engine.errors.EngineError` and
its subclasses, which calibration's errors extend) say what is wrong and what to do, so they
are printed as one ``inception-engine: error: ...`` line with exit status 2; ``--debug``
adds the traceback. Anything else is a bug and keeps its traceback.

Messages other than a command's own output go through :mod:`logging` on stderr: warnings by
default, more with ``-v`` (info) and ``-vv`` (debug).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import traceback

COMMANDS = ["models", "run", "export", "verify", "quantize", "study", "build", "bench",
            "serve_export", "serve", "serve_tune"]
ERROR_STATUS = 2
LOGGERS = ("engine", "calibration", "kernels")
_LEVELS = {0: logging.WARNING, 1: logging.INFO}


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is one line that says where the help is."""

    def error(self, message):
        self.exit(ERROR_STATUS, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def make_parser() -> argparse.ArgumentParser:
    p = Parser(prog="inception-engine",
               description="Inception-v4 / Inception-ResNet inference engine")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                   help="more messages on stderr (-v info, -vv debug)")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error too (bugs always show theirs)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"engine.commands.{name}").register(sub)
    return p


@contextlib.contextmanager
def logging_to_stderr(verbosity: int):
    """While a command runs, send this project's log records to the current stderr at the
    level ``-v`` asks for; the loggers are restored afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(_LEVELS.get(verbosity, logging.DEBUG))
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(level)


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
    with logging_to_stderr(args.verbosity):
        try:
            return int(args.func(args) or 0)
        except EngineError as e:
            if args.debug:
                traceback.print_exc()
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
            return ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
