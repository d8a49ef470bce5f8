"""The ``dartboard`` command: one Typer app, its commands registered once, on first use.

Each command group lives in its own module of this package (listed in :data:`COMMAND_MODULES`,
each with a ``register(app)``). Those modules import only typer and the standard library at the
top; torch, ray and mlflow are imported inside the commands, so ``--help`` and usage errors are
instant.

The contract of the command line (CONVENTIONS.md):

- usage errors (unknown flag, missing argument, bad value) print click's usage message and exit 2;
- bad input (:func:`dartboard.errors.is_user_error`) prints one line and exits 2;
- a service that could not start or be reached (:class:`dartboard.errors.ServiceError`) prints one
  line and exits 1;
- Ctrl-C exits 130 and SIGTERM 143, after ``finally`` blocks and ``except KeyboardInterrupt``
  handlers have saved what exists;
- anything else is a bug: its traceback is printed and the exit code is 1.

Click does the first and the interrupt part itself in standalone mode (``app()`` ends in
``sys.exit``), so nothing here depends on click's exception classes, which typer 0.29 vendors
under a private module path.
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import logging
import os
import signal
import sys
import threading

import typer

from dartboard.collector import collect_less_often
from dartboard.errors import ServiceError, is_user_error, one_line

#: Modules whose ``register(app)`` adds commands; one per command group.
COMMAND_MODULES = (
    "dartboard.platform.cli.search",
    "dartboard.platform.cli.train",
    "dartboard.platform.cli.info",
    "dartboard.platform.cli.sweep",
    "dartboard.platform.cli.ablate",
    "dartboard.platform.cli.models",
    "dartboard.platform.cli.predict",
    "dartboard.platform.cli.distance",
    "dartboard.platform.cli.prune",
    "dartboard.platform.cli.bench",
    "dartboard.platform.cli.pmsm",
    "dartboard.platform.cli.ssl",
    "dartboard.platform.cli.export",
)

SIGINT_EXIT = 128 + signal.SIGINT  # 130
SIGTERM_EXIT = 128 + signal.SIGTERM  # 143


@functools.cache
def build_app() -> typer.Typer:
    """The app with every command registered; built once per process, however often ``main`` runs."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      rich_markup_mode=None,  # plain click help and usage errors: no rich import, one error line
                      help="dartboard: differentiable architecture search, from laptop to Ray cluster.")
    app.callback()(_options)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


VERBOSE_ENV = "DARTBOARD_VERBOSE"  # read by dartboard.platform.ray.session (and inherited by Ray's workers)
MLFLOW_STORE_LOGGER = "mlflow.store.db.utils"  # MLflow's logger of a database store's set-up, shown with --verbose


def _show_version(value: bool) -> None:
    if value:
        from dartboard import __version__

        typer.echo(f"dartboard {__version__}")
        raise typer.Exit()


def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray Tune's status tables, Ray's logs and "
                                                                 "warnings, and every trial's output."),
) -> None:
    """dartboard: differentiable architecture search, from laptop to Ray cluster."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:  # MLflow's notes on creating a new sqlite store's tables ("Creating initial MLflow database tables...")
        logging.getLogger(MLFLOW_STORE_LOGGER).setLevel(logging.WARNING)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same handlers save what exists; exit code 143."""


_terminated: list[int] = []  # the SIGTERM received, if any


def _raise_terminated(signum: int, frame: object) -> None:
    _terminated.append(signum)
    raise Terminated(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with the contract's code (never returns)."""
    collect_less_often()  # the imports and builds of a command are most of its objects (dartboard/collector.py)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _terminated.clear()
    if argv is None and hasattr(signal, "SIGUSR1"):  # the real command line: `kill -USR1 PID` prints every
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # thread's stack (a stuck sweep, say)
    in_main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    if in_main_thread:
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    from dartboard.platform.progress import terminal_display
    from dartboard.training.progress import showing

    try:
        with showing(terminal_display()):  # progress bars of long phases, on a terminal only
            _run(argv)
    finally:
        if in_main_thread:  # main([...]) called from Python leaves the process's SIGTERM handler as it was
            signal.signal(signal.SIGTERM, previous_sigterm if previous_sigterm is not None else signal.SIG_DFL)


def _run(argv: list[str] | None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="dartboard")  # standalone: always ends in SystemExit
    except SystemExit as done:
        if done.code == SIGINT_EXIT and _terminated:  # click exits 130 on any KeyboardInterrupt
            sys.exit(SIGTERM_EXIT)
        raise
    except Terminated:  # raised outside click's handler (e.g. while it was building the context)
        sys.exit(SIGTERM_EXIT)
    except KeyboardInterrupt:
        sys.exit(SIGINT_EXIT)
    except Exception as err:
        if is_user_error(err):
            typer.echo(f"error: {one_line(err)}", err=True)
            sys.exit(2)
        if isinstance(err, ServiceError):
            typer.echo(f"error: {one_line(err)}", err=True)
            sys.exit(1)
        raise  # a bug: Python prints the traceback and exits 1
