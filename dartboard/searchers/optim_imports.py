"""Training without importing ``torch._dynamo`` where nothing compiles (a search, a trial's Train worker, a final
training, a study's dry build).

Torch's optimizers import ``torch._dynamo`` (and with it ``torch._inductor``), 1.1-1.2 CPU s on this project's
2-core machine, in every process that builds one and steps it, for two names:

- ``Optimizer.add_param_group`` (called by every optimizer's constructor), ``zero_grad``, ``state_dict`` and
  ``load_state_dict`` are wrapped by ``torch._compile._disable_dynamo``, whose first call asks
  ``torch._dynamo.disable`` for a disabled version of the method and caches it on the method;
- every ``step`` (``torch.optim.optimizer._use_grad_for_differentiable``) imports ``torch._dynamo`` to call its
  ``graph_break``, which does nothing outside ``torch.compile``.

No ``torch.compile`` region can exist while the real ``torch._dynamo`` is not imported. :func:`defer_dynamo_import`
puts a stand-in module in ``sys.modules`` (:class:`_StandIn`) that answers those two names (the method itself while
the real module is not imported, torch's disabled version from then on; a ``graph_break`` that does nothing until
then) and imports the real ``torch._dynamo`` in its place the first time anything asks it for anything else: an
attribute, a submodule (``torch.compile`` does at once). From then on the process has torch's own module, as if the
stand-in had never been there. Measured in ``benchmarks/HISTORY.md`` (session 29).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

DYNAMO = "torch._dynamo"


class _StandIn(types.ModuleType):
    """``torch._dynamo`` while the real module is not needed (:func:`defer_dynamo_import`). It carries the real
    package's spec, path and file, so that the import system and tools that look at modules take it for the
    package; any name it does not define itself is the real module's, which it imports in its own place then."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(DYNAMO)
        self.__spec__, self.__file__, self.__package__ = spec, spec.origin, DYNAMO
        self.__path__ = list(spec.submodule_search_locations or [])

    @staticmethod
    def graph_break(msg: str = "") -> None:
        """What ``Optimizer.step`` calls: nothing, as torch's own outside a ``torch.compile`` region (none can exist
        without the real module); the real one once it is imported."""
        real = _real_if_imported()
        if real is not None:
            real.graph_break(msg)

    @staticmethod
    def disable(fn: Callable | None = None, recursive: bool = True, **kwargs: Any) -> Any:
        """What torch's ``_disable_dynamo`` wrappers ask for (the optimizers' ``add_param_group``, ``zero_grad``,
        ``state_dict``..., DDP's forward), which cache the answer: a function that calls ``fn`` itself while the
        real module is not imported, and torch's disabled version of ``fn`` from then on."""
        if fn is None:
            return functools.partial(_StandIn.disable, recursive=recursive, **kwargs)
        disabled: list[Callable] = []

        @functools.wraps(fn)
        def call(*args: Any, **kw: Any) -> Any:
            if not disabled:
                real = _real_if_imported()
                if real is None:
                    return fn(*args, **kw)
                disabled.append(real.disable(fn, recursive, **kwargs))
            return disabled[0](*args, **kw)

        call.disabled = disabled  # type: ignore[attr-defined]  # torch's disabled version, once made (tests)
        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(_import_real(), name)


class _Submodules(importlib.abc.MetaPathFinder):
    """A submodule of ``torch._dynamo`` imported while the stand-in holds its place (``import torch._dynamo.utils``):
    the real package is imported first, and a submodule that its import already brought is not run twice. The
    import system, finding such a submodule in ``sys.modules`` after a finder's answer, would load it again from its
    own spec: it is taken out of ``sys.modules`` for the moment and handed back by :class:`_Imported`."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if not name.startswith(DYNAMO + "."):
            return None
        _import_real()
        if name not in sys.modules:
            return None  # the import goes on as usual, under the real package
        return importlib.machinery.ModuleSpec(name, _Imported(sys.modules.pop(name)))


class _Imported(importlib.abc.Loader):
    """Hands the import system a module that was imported already: nothing in it runs again, and its own spec
    stays (the import system sets the spec it was given, here this loader's)."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec):  # noqa: ANN001 - importlib's signature
        return self.module

    def exec_module(self, module) -> None:  # noqa: ANN001
        module.__spec__ = self.spec


_SUBMODULES = _Submodules()
_LOCK = threading.RLock()


def _real_if_imported() -> types.ModuleType | None:
    module = sys.modules.get(DYNAMO)
    return None if module is None or isinstance(module, _StandIn) else module


def _import_real() -> types.ModuleType:
    """The real ``torch._dynamo``, imported now in the stand-in's place if it is not yet. The import itself runs
    outside the lock: the import system's own locks order imports of one module from several threads, and a thread
    holding a submodule's import lock may be waiting here."""
    with _LOCK:
        if isinstance(sys.modules.get(DYNAMO), _StandIn):
            del sys.modules[DYNAMO]
        if _SUBMODULES in sys.meta_path:
            sys.meta_path.remove(_SUBMODULES)
    return importlib.import_module(DYNAMO)


def defer_dynamo_import() -> bool:
    """Spare this process the import of ``torch._dynamo`` until something other than torch's optimizers needs it
    (module docstring). Returns whether the stand-in is in place now (False where the real ``torch._dynamo`` was
    imported already, or where this torch has no such package)."""
    with _LOCK:
        if DYNAMO in sys.modules:
            return isinstance(sys.modules[DYNAMO], _StandIn)
        import torch

        spec = importlib.machinery.PathFinder.find_spec(DYNAMO, list(torch.__path__))
        if spec is None:
            return False
        sys.modules[DYNAMO] = _StandIn(spec)
        sys.meta_path.insert(0, _SUBMODULES)
        return True
