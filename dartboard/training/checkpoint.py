"""The checkpoint format of a searcher's full state (torch only).

``searcher.state_dict()`` (weights, alphas, optimizers, schedulers, schedule/regularizer state,
masks, history, RNG states) is saved with ``torch.save`` as plain containers and tensors, and read
back with ``torch.load(weights_only=True)``: no unpickling of arbitrary objects. numpy arrays and
scalars (numpy's RNG state holds some), which ``weights_only`` refuses, are stored as tagged tensors
and numbers by :func:`to_plain` and restored by :func:`from_plain`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_plain(obj: Any) -> Any:
    """Replace what ``torch.load(weights_only=True)`` refuses (numpy arrays and scalars, e.g. in
    numpy's RNG state) by tagged tensors/numbers; containers are walked (tuples stay tuples)."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy()),
                "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """The inverse of :func:`to_plain`: tagged tensors become numpy arrays of their recorded dtype."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj and set(obj) == {"__ndarray__", "dtype"}:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


#: What reading a damaged checkpoint file raises: gone (OSError), cut short (torch: OSError, RuntimeError, EOFError;
#: JSON: ValueError), edited (KeyError, TypeError, pickle's UnpicklingError from ``weights_only``).
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write a searcher's ``state_dict()`` to ``path`` in the weights-only format."""
    torch.save(to_plain(state), path)
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (``weights_only=True``: nothing is unpickled)."""
    return from_plain(torch.load(path, map_location="cpu", weights_only=True))
