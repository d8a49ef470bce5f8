"""Every registered searcher continues exactly from a checkpoint (the Searcher protocol's
``state_dict``/``load_state_dict`` through the worker's weights-only file): a searcher restored after
epoch 1 into a fresh process state runs epoch 2 to the same bits as the uninterrupted one, whatever
state its schedule, regularizers and monitors keep (FIMT thresholds, ADMM z/u, masks, eigenvalues)."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from torch.utils.data import default_collate

from dartboard.data.catalog import load_dataset
from dartboard.platform.ray.checkpoint import STATE_FILE
from dartboard.searchers.base import seed_everything, set_rng_state
from dartboard.searchers.registry import SEARCHERS, DataShape, build_searcher, get_searcher_spec
from dartboard.training.checkpoint import load_state, save_state, to_plain

SHAPE = DataShape(1, 8, 10)
TINY = {"C": 4, "layers": 2, "epochs": 3}
OWN = {"dartopti": {"C": 4, "epochs": 3},  # its cell count is its start genotype's (ResNet-18: 4 cells)
       "pc-darts": {**TINY, "warmup_epochs": 1},  # alpha and beta steps before and after the checkpoint
       # projection decisions on both sides, one a step (a budget of 20 epochs holds all 34, one a step)
       "darts-pt": {**TINY, "epochs": 20, "pt_start_epoch": 0, "pt_tune_steps": 0},
       # gates, their optimiser and the warm start's generator on both sides of the checkpoint
       "dario": {"epochs": 3, "pretrain_epochs": 0, "iterations": 6, "warmup_samples": 3,
                 "model_kwargs": {"patch_size": 4, "embed_dim": 16, "depth": 3, "num_heads": 2}}}


@functools.cache
def _data(name: str) -> tuple[DataShape, Any]:
    """The data shape and training split of a searcher that names its own data (an application: PMSM's
    motor samples, ColorNAS's colour digits, NASiam's two views); else grayscale 8x8 images."""
    dataset = get_searcher_spec(name).preset.dataset
    if dataset is None:
        return SHAPE, None
    splits = load_dataset(dataset)
    info = splits.info
    return DataShape(info.in_channels, info.input_size, info.num_classes), splits.train


def _batches(name: str, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    _, train = _data(name)
    if train is None:
        return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]
    index = torch.randperm(len(train), generator=g)[:8 * n].tolist()
    return [default_collate([train[i] for i in index[8 * b:8 * b + 8]]) for b in range(n)]


def _build(name: str):
    spec = get_searcher_spec(name)
    shape = _data(name)[0]
    return build_searcher(name, OWN.get(name, {k: v for k, v in TINY.items() if k in spec.options}), shape)


def _epoch(searcher, batches) -> dict[str, float]:
    for train, val in zip(batches[0::2], batches[1::2], strict=True):
        searcher.step(train, val)
    return searcher.end_epoch()


def _same(a: Any, b: Any, where: str = "state") -> None:
    a, b = to_plain(a), to_plain(b)
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_searcher_resumes_bit_identically_from_its_checkpoint(name, tmp_path):
    first, second = _batches(name, 4, 0), _batches(name, 4, 1)
    seed_everything(0)
    a = _build(name)
    _epoch(a, first)
    save_state(a.state_dict(), tmp_path / STATE_FILE)
    rng = load_state(tmp_path / STATE_FILE).get("rng")
    assert rng is not None, "the checkpoint keeps the RNG states"
    set_rng_state(rng)  # the uninterrupted run goes on from the RNG states of the checkpoint
    metrics_a = _epoch(a, second)
    seed_everything(123)  # another process state: the checkpoint must restore everything, RNG included
    b = _build(name)
    b.load_state_dict(load_state(tmp_path / STATE_FILE))  # as the Ray worker does: nothing restored by hand
    metrics_b = _epoch(b, second)
    _same(metrics_a, metrics_b, "metrics")
    assert a.derive() == b.derive()
    _same(a.state_dict(), b.state_dict())
