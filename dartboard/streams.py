"""The process's standard error with known lines of other libraries left out: lines that native code (c10's
profiler notes) or another library (MLflow's registry) writes straight to it, which say nothing to a dartboard user
or which dartboard says itself. Standard library only."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stderr_without(*texts: str) -> Iterator[None]:
    """Everything written to file descriptor 2 while inside (native libraries' lines, Python's ``sys.stderr``),
    written out again on leaving, in order, except the lines that contain one of ``texts``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            left_out = [text.encode() for text in texts]
            kept = [line for line in held.read().splitlines(keepends=True) if not any(t in line for t in left_out)]
            if kept:
                os.write(2, b"".join(kept))
