"""The ``dartboard`` command line (entry point ``dartboard.platform.cli:main``); one module per
command group, the app and its exit-code contract in :mod:`dartboard.platform.cli.main`."""

from dartboard.platform.cli.main import build_app, main

__all__ = ["build_app", "main"]
