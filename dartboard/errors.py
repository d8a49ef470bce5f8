"""The one error type for bad input (torch-free, so any layer can raise it).

A :class:`UserInputError` says that what the user gave (a flag, a file, a config value, a name)
cannot be used, and names the field, the value and what was expected. The ``dartboard`` command
prints it as one line and exits 2; every other exception is a bug and keeps its traceback.
It subclasses ``ValueError`` so that callers catching ``ValueError`` keep working.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user; the message names the field, the value and what was expected."""
