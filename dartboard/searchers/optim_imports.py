"""Building optimizers without importing ``torch._dynamo`` (for checks that build searchers and never step).

``torch.optim.Optimizer``'s ``add_param_group`` (called by every optimizer's constructor), ``zero_grad``,
``state_dict`` and ``load_state_dict`` are wrapped by ``torch._compile._disable_dynamo``: the wrapper's first
call imports ``torch._dynamo`` (and with it ``torch._inductor``), about 1 s of CPU on this project's 2-core
machine, to build the disabled version of the method, which it caches on the method as ``__dynamo_disable``.
Outside a ``torch.compile`` region that version only calls the method; no region can exist while
``torch._dynamo`` is not imported.

:func:`dynamo_import_deferred` caches the plain method there instead, for the duration of a ``with`` block, and
removes it again as soon as anything starts importing ``torch._dynamo`` (or the block ends): torch's own wrapper
then builds its disabled version as usual on the next call. A study's dry build (every variant's searcher and its
optimizers, built beside Ray's start) uses it. ``Optimizer.step`` imports ``torch._dynamo`` itself, so a search
pays the import at its first step either way.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

CACHE = "__dynamo_disable"  # the attribute torch._compile._disable_dynamo caches its disabled method in
DYNAMO = "torch._dynamo"


def wrapped_methods() -> list:
    """The functions under ``Optimizer``'s ``_disable_dynamo`` wrappers (none if a torch release changes them)."""
    import torch._compile
    from torch.optim import Optimizer

    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    return [m.__wrapped__ for m in vars(Optimizer).values()
            if getattr(m, "__code__", None) is wrapper_code and callable(getattr(m, "__wrapped__", None))]


class _Deferral(importlib.abc.MetaPathFinder):
    """Holds the plain methods cached in place of torch's disabled ones; undone when ``torch._dynamo`` is
    looked up for import (before its first line runs) or when the block ends."""

    def __init__(self) -> None:
        self.methods: list = []

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if name == DYNAMO:
            self.undo()
        return None  # the import itself goes on as usual

    def apply(self) -> None:
        for fn in wrapped_methods():
            if CACHE not in vars(fn):  # never replace a disabled version torch already built
                setattr(fn, CACHE, fn)
                self.methods.append(fn)
        sys.meta_path.insert(0, self)

    def undo(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        while self.methods:
            fn = self.methods.pop()
            if vars(fn).get(CACHE) is fn:
                delattr(fn, CACHE)


@contextmanager
def dynamo_import_deferred() -> Iterator[None]:
    """Optimizers built inside the block do not import ``torch._dynamo`` (see the module's docstring)."""
    if DYNAMO in sys.modules:  # imported already: nothing to save
        yield
        return
    deferral = _Deferral()
    deferral.apply()
    try:
        yield
    finally:
        deferral.undo()
