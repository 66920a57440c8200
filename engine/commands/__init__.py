"""The subcommands of ``inception-engine``, one module each (see :mod:`engine.cli`)."""
from __future__ import annotations

import argparse


def at_least(minimum, kind=int):
    """An argparse ``type`` that reads a ``kind`` number and rejects one below ``minimum``,
    so a bad option value is a usage error before any work starts."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
