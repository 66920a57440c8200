"""The subcommands of ``inception-engine``, one module each (see :mod:`engine.cli`).

Every number an option takes is read by one of the argparse types here, so a value out of
its range is a usage error, naming the option and the valid range, before any work starts.
"""
from __future__ import annotations

import argparse
import math


def _read(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}; give {what}") from None
    # float() reads nan and inf, which pass or fail the range checks by accident
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a finite "
                                         "number")
    return value


def at_least(minimum, kind=int):
    """An argparse ``type`` that reads a ``kind`` number and rejects one below ``minimum``."""
    def parse(text: str):
        value = _read(text, kind)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum}; give a "
                                             f"value >= {minimum}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def in_range(low, high, kind=float, low_open: bool = True):
    """An argparse ``type`` for a ``kind`` number in ``(low, high]`` (``[low, high]`` when
    ``low_open`` is false)."""
    interval = f"{'(' if low_open else '['}{low}, {high}]"

    def parse(text: str):
        value = _read(text, kind)
        if not ((low < value) if low_open else (low <= value)) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}; give a value in "
                                             f"{interval}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)
non_negative_float = at_least(0.0, float)


def percentile(text: str) -> float:
    """An argparse ``type`` for a calibration percentile (the rule is calibration's own)."""
    from calibration.methods import check_percentile
    from ..errors import InputError
    try:
        return check_percentile(_read(text, float))
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def confidence(text: str) -> float:
    """An argparse ``type`` for a confidence level in [0.5, 1) (e.g. 0.95)."""
    value = _read(text, float)
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a confidence in [0.5, 1); give e.g. "
                                         "0.95 (95%)")
    return value


def add_command(sub, name: str, example: str, **kwargs) -> argparse.ArgumentParser:
    """Add subcommand ``name``; its ``--help`` ends with the worked ``example`` (one or more
    command lines)."""
    return sub.add_parser(name, epilog="example:\n  " + example.strip().replace("\n", "\n  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
