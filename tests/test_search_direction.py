"""Every preset's architecture step goes the way its method says, with the weights held still.

A search test that checks only that the loss fell or the accuracy rose cannot see a broken architecture step: the
weight steps alone make that happen (an audit negated the alpha gradient of each preset in turn and found 20 presets
whose tests all stayed green). Here no weight step runs, so only the alpha steps can move the objective:
- the searcher's own alpha objective (L_val plus its regularizers) falls over a few alpha steps on the batch they
  take, for every preset with a supernet; for presets that sample (GDAS, SNAS, DrNAS, PC-DARTS' channels), as the
  mean over fixed samples, the same before and after (common random numbers);
- a regularizer pushes its own term down: after the same steps from the same start, the term is lower with the
  regularizer than without it;
- SDARTS' weight step trains on perturbed mixing weights, within its epsilon.
"""

from __future__ import annotations

import functools
import statistics

import pytest
import torch
from torch.utils.data import default_collate

from dartboard.data.catalog import load_dataset
from dartboard.searchers.registry import SEARCHERS, DataShape, build_searcher, get_searcher_spec

torch.set_num_threads(1)

#: Searchers without a cell supernet, whose direction is tested with their own objective: DARIO lowers its proxy
#: (test_dario_search), the PMSM steps move towards the teacher's depth and activation (test_pmsm).
NO_CELLS = {"dario", "pmsm-depth", "pmsm-activation"}
SMALL = {"C": 4, "layers": 2, "reductions": (1,), "arch_lr": 0.05, "epochs": 10}
OWN = {"dartopti": {"C": 4, "arch_lr": 0.05, "warmup_epochs": 0}}  # its cells are its start's
STEPS = 3
#: GDAS forwards one hard sample (straight-through): the loss of a draw moves only where its argmax flips, so its
#: expected loss needs more draws and a longer way (with the alpha gradient negated: 2.3795 -> 2.3855).
GDAS = {"arch_lr": 0.1, "steps": 20, "samples": 64}
#: The draws of the sampling presets (each keyed by the global step, as replicas under DDP draw alike), the same
#: before and after the alpha steps. With GDAS' hard samples the loss of one draw moves only where an argmax flips.
SAMPLES = range(1000, 1016)


@functools.cache
def _data(dataset: str) -> tuple[DataShape, tuple]:
    splits = load_dataset(dataset)
    index = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:16].tolist()
    torch.manual_seed(0)  # NASiam's two views are augmentations drawn from the global generator
    batch = default_collate([splits.train[i] for i in index])
    return DataShape(splits.info.in_channels, splits.info.input_size, splits.info.num_classes), batch


def _searcher(name: str, **options):
    spec = get_searcher_spec(name)
    shape, batch = _data(spec.preset.dataset or "digits")
    given = OWN.get(name, {k: v for k, v in SMALL.items() if k in spec.options})
    torch.manual_seed(0)
    searcher = build_searcher(name, {**given, **options}, shape)
    searcher.epoch = 4  # the ramps (proximity's c, beta-decay's lambda) are on; DARTS-PT projects from epoch 5
    return searcher, batch


def _alpha_steps(searcher, batch, steps: int = STEPS) -> None:
    x, y = batch
    for i in range(steps):
        torch.manual_seed(100 + i)
        searcher.global_step = i
        searcher.activation.resample(searcher.ctx)
        searcher.arch_step(x, y, x, y)  # no weight step: only the alphas move


def _objective(searcher, batch, samples: int = len(SAMPLES)) -> float:
    """The alpha objective, L_val + regularizers, averaged over the fixed samples; BN statistics left as they were."""
    x, y = batch
    values = []
    step = searcher.global_step
    sampling = callable(getattr(searcher.activation, "generator", None))  # a sampler's seeded generator
    for seed in range(SAMPLES.start, SAMPLES.start + samples) if sampling else SAMPLES[:1]:
        torch.manual_seed(seed)
        searcher.global_step = seed
        searcher.activation.resample(searcher.ctx)
        with torch.no_grad(), searcher.ctx.preserved_buffers():
            weights = searcher.group_weights()
            loss = searcher.objective.loss(searcher.forward(x, weights), y) + searcher.regularization(weights)
        values.append(float(loss))
    searcher.global_step = step
    return statistics.mean(values)


@pytest.mark.parametrize("name", sorted(set(SEARCHERS) - NO_CELLS))
def test_alpha_steps_lower_the_searchers_own_objective(name):
    searcher, batch = _searcher(name, **({"arch_lr": GDAS["arch_lr"]} if name == "gdas" else {}))
    samples = GDAS["samples"] if name == "gdas" else len(SAMPLES)
    before = _objective(searcher, batch, samples)
    _alpha_steps(searcher, batch, GDAS["steps"] if name == "gdas" else STEPS)
    after = _objective(searcher, batch, samples)
    assert after < before, f"{name}: {before:.6f} -> {after:.6f}"


#: Presets and the regularizer whose term they push down (D-DARTS' ablation term acts through its gradient terms
#: and its zero-one term beside it: ddarts-lf has the zero-one term alone).
REGULARIZED = ["fairdarts", "ddarts-lf", "sparse-darts", "beta-darts", "darts+pr", "darts+admm", "colornas-rgb"]


@pytest.mark.parametrize("name", REGULARIZED)
def test_a_regularizer_lowers_its_own_term(name):
    with_it, batch = _searcher(name)
    without, _ = _searcher(name, regularizers=[])
    assert with_it.regularizers and not without.regularizers
    _alpha_steps(with_it, batch)
    _alpha_steps(without, batch)
    for reg in with_it.regularizers:  # the term of the regularizer that ran, on either searcher's alphas
        with torch.no_grad():
            on = float(reg.loss(with_it.ctx, with_it.group_weights()))
            off = float(reg.loss(without.ctx, without.group_weights()))
        assert on < off, f"{name} {type(reg).__name__}: {on:.6f} with it, {off:.6f} without"


@pytest.mark.parametrize("name, perturbation", [("sdarts-rs", "random"), ("sdarts-adv", "adversarial")])
def test_sdarts_weight_step_trains_on_perturbed_weights(name, perturbation):
    """SDARTS: the weights are trained under mixing weights perturbed by at most epsilon (0.03 -> 0.3 over the
    search: 0.165 half-way), never under the clean ones."""
    searcher, (x, y) = _searcher(name, perturbation={"name": perturbation, "clip": "none"})
    clean = [w.detach().clone() for w in searcher.group_weights()]
    seen = []
    forward = searcher.forward

    def recording(x, weights, module=None, detach_arch=False):
        if module is searcher.train_module:
            seen.append([w.detach().clone() for w in weights])
        return forward(x, weights, module, detach_arch)

    searcher.forward = recording
    searcher.weight_step(x, y)
    (trained_under,) = seen
    largest = max(float((p - c).abs().max()) for p, c in zip(trained_under, clean, strict=True))
    assert 0.01 < largest <= 0.165 + 1e-6
