"""Errors about the user's input (torch-free, so any layer can raise them).

A :class:`UserInputError` says that what the user gave (a flag, a file, a config value, a name)
cannot be used, and names the field, the value and what was expected. It subclasses ``ValueError``
so that callers catching ``ValueError`` keep working.

The ``dartboard`` command prints a user error as one line and exits 2 (:func:`is_user_error`):
a ``UserInputError``, a genotype that cannot be read (``GenotypeError``) or a config rejected by
pydantic (``ValidationError``). A plain ``ValueError`` is a bug like any other: traceback, exit 1.
Those other types are matched through the modules that define them, only when these are already
loaded (an exception cannot come from a module never imported), so the check imports nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserInputError(ValueError):
    """Bad input from the user; the message names the field, the value and what was expected."""


class DataError(UserInputError):
    """A dataset that cannot be loaded; the message says how to provide it."""


class MissingFileError(UserInputError, FileNotFoundError):
    """A file the user named that is not there (or is a folder): a user error that code catching
    ``FileNotFoundError`` still sees as one."""


def check_file(path: str | Path, what: str, error: type[Exception] = MissingFileError) -> Path:
    """``path`` if it is a file; else ``error`` saying whether nothing or a folder is there (``what``:
    ``config file``, ``genotype file``, ...)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {str(path)!r} is a folder, not a file")
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    return path


class ServiceError(RuntimeError):
    """A service the command needs could not start or be reached (a local Ray instance on an
    overloaded machine, say): not the user's input and not a bug. The command prints one line
    naming the service and what to try, and exits 1."""


#: (module, class name) of the other exceptions that are about the user's input.
INPUT_ERROR_TYPES = (
    ("dartboard.spaces.genotype", "GenotypeError"),
    ("pydantic", "ValidationError"),
)


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, UserInputError):
        return True
    for module_name, type_name in INPUT_ERROR_TYPES:
        module = sys.modules.get(module_name)
        cls = getattr(module, type_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def one_line(err: BaseException) -> str:
    """The message of a user error on one line (pydantic's errors as ``field: message; ...``)."""
    errors = getattr(err, "errors", None)
    if type(err).__name__ == "ValidationError" and callable(errors):
        return "invalid configuration: " + "; ".join(_pydantic_part(e) for e in errors())
    return " ".join(str(err).split()) or type(err).__name__


def message_line(err: BaseException, last: bool = False) -> str:
    """One line of an error's message: the first, or the ``last`` (torch's state_dict errors end with the mismatch);
    its type's name where the message is empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(err).__name__


def _pydantic_part(error: dict) -> str:
    """One of pydantic's errors as ``field: message``. A validator's own ``ValueError`` already names its field
    and reads ``Value error, ...`` in pydantic's message: it is given as the validator wrote it, after the
    field where pydantic knows one (a model's validator has none)."""
    message = error["msg"]
    if error.get("type") == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, "):]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {message}" if where else message


@contextmanager
def user_input(context: str | None = None) -> Iterator[None]:
    """Around a call that only reads and validates what the user gave (a study file, a config's
    values): its ``ValueError`` or ``FileNotFoundError`` is about that input, so it becomes a
    :class:`UserInputError`.

    Never put work (training, I/O of results) inside: a ``ValueError`` there is a bug.
    """
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        if is_user_error(err):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        raise UserInputError(f"{context}: {message}" if context else message) from err


def refuse_with(flag: str, given: dict[str, object], why: str) -> None:
    """Refuse the options of ``given`` (``{"--name": value}``) that were set (not None, not False, not empty) next
    to ``flag``, which decides them itself (``why``): one line naming each, instead of ignoring them unseen."""
    named = [name for name, value in given.items() if value is not None and value is not False and value != []
             and value != ""]
    if named:
        raise UserInputError(f"{flag}: {why}; drop {', '.join(named)}")
