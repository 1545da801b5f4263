"""Command-line option types shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def comma_separated(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of ``allowed``, naming unknown ``what``."""

    def parse(value: str) -> list[str]:
        chosen = [item.strip() for item in value.split(",") if item.strip()]
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {unknown}; choose from {list(allowed)}"
            )
        return chosen

    return parse


def non_negative_int(value: str) -> int:
    """An argparse type: an integer >= 0 (0 usually turns a measurement off)."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is negative")
    return number
