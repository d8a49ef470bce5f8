"""The bundled DARIO demo: train a small ViT on digits, prune it with Algorithm 5, fine-tune, measure.

The small ViT plays the pre-trained model (nothing is downloaded). The demo then follows thesis 6.1:
warm start + differentiable search with the parameter-variance proxy, block granularity, threshold 0.65,
physical pruning, and fine-tuning. It reports two fine-tuning protocols of the same pruned model:

- the thesis protocol (6.1.2): only the last block, the final norm and the head are trained;
- all layers: every parameter of the pruned model is trained.

and says which one meets issue 8's bar (at most ``ACCURACY_BAR`` points lost, fewer parameters).

Where the demo departs from the library defaults, and why (also printed by :meth:`DemoReport.lines`):

- warm start prior: alpha ~ N(mu, 1) with mu chosen so each gate is kept with probability 0.8 at the thesis
  threshold 0.65 (:func:`prior_mean_for_keep_probability`: mu = 1.461), instead of the thesis' N(0, 1), which
  at 0.65 keeps each gate with probability 0.27: on a 6-block model that prunes 4-5 blocks before the search
  has a say (measured: 7-11 points lost). 0.8 is the keep rate of the reference implementation's N(0, 1)
  prior at its threshold 0.3 (1 - Phi(logit 0.3) = 0.80), so the demo keeps the thesis threshold and the
  reference's pruning rate. With a keep rate of 1/2 (the thesis' 6 of 12 blocks on ViT-B) the best of k
  prunes 3-5 of the 6 small blocks and the pruned model loses 3-10 points (measured).
- gate step: ``gate_gradient="unit"`` (normalised gradient descent, see :mod:`dartboard.searchers.dario`):
  on this model |ds/dalpha| ~ 2e-8, so the thesis form at lambda = 0.1 does not move the gates at all.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dartboard.platform.dario_run import PruneResult, compare_throughput, prune_model
from dartboard.searchers.base import seed_everything
from dartboard.searchers.dario import THRESHOLD, DarioConfig, prior_mean_for_keep_probability
from dartboard.spaces.genotype import GateGenotype
from dartboard.spaces.vit import create_vit, infer_input_shape
from dartboard.training.vit_finetune import evaluate, finetune_last_block, train_epochs

DEMO_MODEL = "vit_tiny_patch16_224"
# A small ViT for the 8x8 digits: 2x2 patches (16 tokens), 6 blocks of width 96 (674k parameters). Width 64
# reached 96.4-96.7% on seeds 0 and 2 with the same recipe; width 96 reaches 97.5% on seed 0 (measured).
DEMO_KWARGS = {"img_size": 8, "patch_size": 2, "embed_dim": 96, "depth": 6, "num_heads": 4, "in_chans": 1,
               "num_classes": 10, "drop_path_rate": 0.1}  # stochastic depth as in DeiT's recipe (0.1)
ACCURACY_BAR = 2.0  # issue 8: the pruned ViT loses at most 2 points of test accuracy after fine-tuning
DEMO_KEEP_PROBABILITY = 0.8  # warm-start prior keep rate = the reference's N(0,1) at its threshold 0.3
# Kept for the CLI's --threshold help: the demo uses the thesis threshold.
DEMO_THRESHOLD = THRESHOLD


@dataclass
class DemoSettings:
    """Everything the demo trains and searches with; the defaults are the bundled demo (~2-3 min, 2 cores)."""

    model_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEMO_KWARGS))
    train_epochs: int = 40
    train_lr: float = 2e-3
    warmup_epochs: float = 3.0  # linear warm-up (DeiT: 5 of 300 epochs); width 64: 93.1% -> 96.7% (measured)
    label_smoothing: float = 0.1  # DeiT's recipe
    finetune_epochs: int = 30  # each protocol
    finetune_lr: float = 2e-3  # each protocol: the training recipe again (1 epoch warm-up, label smoothing)
    threshold: float = THRESHOLD  # thesis 0.65
    keep_probability: float = DEMO_KEEP_PROBABILITY
    warmup_samples: int = 100  # k
    iterations: int = 50  # n (thesis 500 on ViT-B; the gates move lambda per step with the "unit" gate step)
    search_lr: float = 0.01  # lambda: alpha moves at most n * lambda = 0.5 in L2 norm
    gate_gradient: str = "unit"
    batch_size: int = 64

    def config(self, seed: int) -> DarioConfig:
        mean = prior_mean_for_keep_probability(self.threshold, self.keep_probability)
        return DarioConfig(granularity="block", threshold=self.threshold, warmup_samples=self.warmup_samples,
                           iterations=self.iterations, search_lr=self.search_lr, gate_gradient=self.gate_gradient,
                           warmup_mean=mean, seed=seed)


def digits_loaders(seed: int, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import make_loader

    splits = load_dataset("digits")
    return (make_loader(splits.train, batch_size, shuffle=True, seed=seed),
            make_loader(splits.test, 256, shuffle=False, seed=seed))


def train_demo_vit(seed: int = 0, settings: DemoSettings | None = None) -> tuple[nn.Module, DataLoader, DataLoader]:
    """The small ViT of the demo, trained from scratch on digits (it plays the pre-trained model)."""
    settings = settings or DemoSettings()
    seed_everything(seed)
    model = create_vit(DEMO_MODEL, **settings.model_kwargs)
    train, test = digits_loaders(seed, settings.batch_size)
    train_epochs(model, train, settings.train_epochs, settings.train_lr, warmup_epochs=settings.warmup_epochs,
                 label_smoothing=settings.label_smoothing, description="training the demo ViT")
    return model, train, test


@dataclass
class DemoReport:
    accuracy_original: float
    accuracy_pruned_before_finetune: float
    accuracy_last_block: float  # thesis protocol: last block + final norm + head fine-tuned
    accuracy_all_layers: float  # every layer of the pruned model fine-tuned
    params_original: int
    params_pruned: int
    genotype: GateGenotype
    config: DarioConfig
    throughput: dict[str, float]
    search_seconds: float
    cpu_seconds: float  # process CPU time of the whole demo (training, search, fine-tuning, throughput)
    wall_seconds: float

    def meets_bar(self, accuracy: float) -> bool:
        return accuracy >= self.accuracy_original - ACCURACY_BAR and self.params_pruned < self.params_original

    def lines(self) -> list[str]:
        g, c = self.genotype, self.config
        protocols = {"last block + head (thesis)": self.accuracy_last_block, "all layers": self.accuracy_all_layers}
        meeting = [name for name, acc in protocols.items() if self.meets_bar(acc)]
        return [
            f"search: block gates, proxy {c.proxy}, threshold {c.threshold} (thesis), warm start best of "
            f"k={c.warmup_samples} alpha ~ N({c.warmup_mean:.3f}, {c.warmup_std:g}) (prior keep rate "
            f"{_keep_rate(c):.2f}; the thesis' N(0, 1) keeps 0.27 at 0.65), n={c.iterations} steps, "
            f"gate step {c.gate_gradient!r} lambda={c.search_lr:g} (the thesis form moves the gates by ~1e-6 here)",
            "gates: " + " ".join(f"{v:.3f}" for v in g.meta.get("block_gates", [])),
            f"blocks kept: {list(g.blocks_kept)} of {g.n_blocks}"
            + (f"; heads kept: {dict(g.heads_kept)}" if g.heads_kept else ""),
            f"parameters: original {self.params_original:,}  pruned {self.params_pruned:,} "
            f"({100 * self.params_pruned / self.params_original:.1f}%)",
            f"test accuracy: original {self.accuracy_original:.2f}%  pruned "
            f"{self.accuracy_pruned_before_finetune:.2f}% before fine-tuning",
            *(f"  after fine-tuning {name}: {acc:.2f}% ({acc - self.accuracy_original:+.2f} points)"
              for name, acc in protocols.items()),
            f"bar (<= {ACCURACY_BAR:g} points lost, fewer parameters): "
            + (f"met by {', '.join(meeting)}" if meeting else "not met"),
            f"time: search {self.search_seconds:.1f} s, demo {self.wall_seconds:.0f} s wall, "
            f"{self.cpu_seconds:.0f} s CPU",
            "throughput (images/s, CPU): " + "  ".join(f"{k} {v:.3g}" for k, v in self.throughput.items()),
        ]


def _keep_rate(config: DarioConfig) -> float:
    """P(sigmoid(alpha) >= threshold) under the warm-start prior N(warmup_mean, warmup_std^2)."""
    logit = math.log(config.threshold / (1.0 - config.threshold))
    return 0.5 * math.erfc((logit - config.warmup_mean) / (config.warmup_std * math.sqrt(2.0)))


DEMO_THREADS = 1  # tiny ViT: 2 intra-op threads cost ~2.5x the CPU time of 1 thread per epoch (measured)


def run_demo(settings: DemoSettings | None = None, seed: int = 0, config: DarioConfig | None = None,
             throughput_steps: int = 5, num_threads: int | None = DEMO_THREADS) -> tuple[DemoReport, PruneResult]:
    """Train the demo ViT on digits, prune it with DARIO, fine-tune with both protocols, measure.

    ``num_threads``: torch intra-op threads during the demo (restored afterwards); None leaves them as they are.
    """
    saved = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_demo(settings, seed, config, throughput_steps)
    finally:
        torch.set_num_threads(saved)


def _run_demo(settings: DemoSettings | None, seed: int, config: DarioConfig | None,
              throughput_steps: int) -> tuple[DemoReport, PruneResult]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    settings = settings or DemoSettings()
    config = config or settings.config(seed)
    model, train, test = train_demo_vit(seed, settings)
    acc_original = evaluate(model, test)
    result = prune_model(model, DEMO_MODEL, config, settings.model_kwargs)
    acc_before = evaluate(result.pruned, test)
    seed_everything(seed)
    last_block = copy.deepcopy(result.pruned)
    finetune_last_block(last_block, train, settings.finetune_epochs, settings.finetune_lr, warmup_epochs=1.0,
                        label_smoothing=settings.label_smoothing)
    acc_last = evaluate(last_block, test)
    seed_everything(seed)
    train_epochs(result.pruned, train, settings.finetune_epochs, settings.finetune_lr, warmup_epochs=1.0,
                 label_smoothing=settings.label_smoothing, description="fine-tuning all layers")
    acc_all = evaluate(result.pruned, test)
    throughput = {}
    if throughput_steps > 0:
        throughput = compare_throughput(model, result.pruned, infer_input_shape(model), batch_size=256,
                                        steps=throughput_steps, warmup=2)
    report = DemoReport(acc_original, acc_before, acc_last, acc_all, result.params_original, result.params_pruned,
                        result.genotype, config, throughput, result.search_seconds,
                        time.process_time() - cpu0, time.perf_counter() - wall0)
    result.metrics.update(accuracy_original=acc_original, accuracy_pruned_before_finetune=acc_before,
                          accuracy_pruned_last_block=acc_last, accuracy_pruned_all_layers=acc_all,
                          demo_cpu_seconds=report.cpu_seconds, **throughput)
    return report, result
