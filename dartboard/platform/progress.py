"""The terminal side of :mod:`dartboard.training.progress`: a rich progress bar per long phase, on
stderr, shown only when stderr is a terminal (logs, pipes and ``--json`` output stay clean), and how the logs and
summaries count things (:func:`counted`, :func:`epochs_in_words`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def counted(n: int, noun: str) -> str:
    """``n`` of ``noun`` (a noun whose plural takes an "s") in words: "1 seed", "3 seeds", "0 seeds"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def epochs_in_words(n: int | float) -> str:
    """``n`` epochs in words: "1 epoch", "3 epochs" (a float, such as a trial's last reported epoch, rounded)."""
    return counted(round(n), "epoch")


@contextmanager
def rich_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """One transient bar: steps done of ``total``, elapsed and remaining time."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=True, console=Console(stderr=True))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def terminal_display():
    """The display for this process: rich bars when stderr is a terminal, else none."""
    return rich_bar if sys.stderr.isatty() else None
