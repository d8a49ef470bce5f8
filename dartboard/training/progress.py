"""Progress of long phases (training a network, fine-tuning) without tying the core to a terminal.

The core announces a phase with ``with phase("training", total_steps) as advance:`` and calls
``advance()`` after every step; nothing happens unless the command line installed a display
(``dartboard.platform.progress``), so Ray workers and library callers stay silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

#: description, total steps -> a context manager yielding ``advance()``; None: no display.
Display = Callable[[str, int], AbstractContextManager[Callable[[], None]]]
_display: ContextVar[Display | None] = ContextVar("dartboard_progress_display", default=None)


def _no_op() -> None:
    return None


def phase(description: str, total: int) -> AbstractContextManager[Callable[[], None]]:
    display = _display.get()
    return nullcontext(_no_op) if display is None else display(description, total)


@contextmanager
def showing(display: Display | None) -> Iterator[None]:
    """Phases started inside this block are shown with ``display``."""
    token = _display.set(display)
    try:
        yield
    finally:
        _display.reset(token)
