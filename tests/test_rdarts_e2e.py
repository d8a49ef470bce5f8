"""R-DARTS end to end with real eigenvalues: ``rdarts-es`` searched through the ordinary search loop
(loaders, epochs) on the tabular mini space tiny81, with the Hessian's dominant eigenvalue computed by
power iteration (no replaced eigenvalue function). A run-through: the eigenvalues are computed, finite,
reported in the epochs' metrics and kept by the hook's checkpoint state. Which epoch the stopping rule
fires at is tested against a hand-written trace in tests/test_rdarts.py, not here.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from dartboard.searchers.loop import run_search
from dartboard.searchers.parts.rdarts import RDartsHook
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.tiny import TINY81_SEARCH_OPTIONS

EPOCHS = 4
OPTIONS = {**TINY81_SEARCH_OPTIONS, "C": 4, "epochs": EPOCHS}


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    train, val = TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
    return (DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed + 1)))


def test_rdarts_es_computes_finite_eigenvalues_and_reports_them_every_evaluation():
    torch.manual_seed(0)
    searcher = build_searcher("rdarts-es", OPTIONS, DataShape(1, 8, 10))
    hook = next(h for h in searcher.hooks if isinstance(h, RDartsHook))
    history = run_search(searcher, *loaders(), EPOCHS)
    reported = [m["hessian_eigenvalue"] for m in history if "hessian_eigenvalue" in m]
    assert len(hook.eigenvalues) >= 2, hook.epochs  # measured more than once within 4 epochs
    assert all(math.isfinite(v) for v in hook.eigenvalues)
    assert all(v != 0.0 for v in hook.eigenvalues)  # a real curvature, not a placeholder
    assert reported == hook.eigenvalues  # each measurement is in its epoch's metrics
    assert hook.epochs == sorted(set(hook.epochs)) and all(1 <= e <= EPOCHS for e in hook.epochs)
    state = searcher.state_dict()  # the curvature history travels with the searcher's checkpoint
    torch.manual_seed(1)
    again = build_searcher("rdarts-es", OPTIONS, DataShape(1, 8, 10))
    again.load_state_dict(state)
    restored = next(h for h in again.hooks if isinstance(h, RDartsHook))
    assert restored.eigenvalues == hook.eigenvalues and restored.epochs == hook.epochs
