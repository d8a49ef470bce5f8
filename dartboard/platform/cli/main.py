"""The ``dartboard`` command. Each area of the platform registers its own commands from
its own module (listed in :data:`COMMAND_MODULES`, each with a ``register(app)``).

User errors (bad genotype, missing dataset, bad config value) end with one line naming
the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import signal
import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dartboard: differentiable architecture search, from laptop to Ray cluster.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (speed, memory, quality).")
app.add_typer(bench_app, name="bench")

#: Modules whose ``register(app)`` adds commands; one per area of the platform.
COMMAND_MODULES = [
    "dartboard.platform.commands",
    "dartboard.platform.cli_registry",
    "dartboard.platform.cli_quality",
    "dartboard.platform.cli_sweep",
    "dartboard.platform.cli_dario",
    "dartboard.platform.cli_ddarts",
]


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from dartboard.platform.data import DataError
    from dartboard.spaces.genotype import GenotypeError

    return (UserError, GenotypeError, DataError, ValidationError, ValueError, FileNotFoundError)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv is None and hasattr(signal, "SIGUSR1"):  # the command line: `kill -USR1 PID` prints every
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # thread's stack (a stuck sweep, say)
    _register_all()
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - one clear line for user errors, traceback otherwise
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        if isinstance(err, user_error_types()):
            typer.echo(f"error: {_one_line(err)}", err=True)
            sys.exit(2)
        raise


def _one_line(err: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return "invalid configuration: " + "; ".join(parts)
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    main()
