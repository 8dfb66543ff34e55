"""The argument types, shared argument definitions and user errors of the ``fastconv`` command
(cli) and its benchmark harness (bench)."""

from __future__ import annotations

import argparse
import math

from fastconv._guard import startable_threads


class CommandError(Exception):
    """A user error: printed as one line, exit code 1."""


class UsageError(CommandError):
    """A bad option value that only shows after parsing: printed as one line, exit code 2."""


def int_at_least(minimum):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}; got {v}")
        return v
    return parse


positive_int, nonneg_int = int_at_least(1), int_at_least(0)


def float_above(minimum, strict):
    bound = f"> {minimum}" if strict else f">= {minimum}"

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
        if not (math.isfinite(v) and (v > minimum if strict else v >= minimum)):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}; got {text}")
        return v
    return parse


nonneg_float, positive_float = float_above(0, strict=False), float_above(0, strict=True)


def finite_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
    return v


def fraction(text):
    v = nonneg_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1); got {text}")
    return v


def open_fraction(text):
    v = fraction(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be in (0, 1); got 0")
    return v


def check_threads(n: int, option: str = "--threads") -> None:
    """Refuse a thread count this process cannot start, before OpenMP is asked (libgomp,
    failing to create a thread, ends the whole process)."""
    most, why = startable_threads()
    if n > most:
        raise UsageError(f"{option}: must be at most {most} here ({why}); got {n}")


# -- arguments several commands take, defined once ------------------------------------------------

CHECKPOINT_HELP = "run folder, or a checkpoint folder such as runs/x/best"
THREADS_HELP = "kernel threads (default: OMP_NUM_THREADS, else the CPUs this process may use)"


def add_threads_option(p, help: str = THREADS_HELP) -> None:
    p.add_argument("--threads", type=positive_int, metavar="N", help=help)


def add_checkpoint_arguments(p, batch_size: int | None = None) -> None:
    """CHECKPOINT, the argument of the commands that read one (evaluate, export, predict), and,
    for those that run its model, --batch-size (``batch_size`` its default) and --threads."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINT_HELP)
    if batch_size is not None:
        p.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                       help="examples per pass through the model (default: %(default)s)")
        add_threads_option(p)
