"""DARIO's constants and its study searcher's options, as data (no torch): the searcher registry lists the study
searcher's defaults without importing the searcher (:mod:`dartboard.searchers.dario.search`, ``.study``), so
that a study's trial actor (``platform.ray.space.trial_run_config``) needs no torch, and ``dartboard prune --help``
shows them without it."""

from __future__ import annotations

from typing import Any

THRESHOLD = 0.65  # thesis 6.1.2 (Fig 6.10-6.11); the reference implementation uses 0.3
WARMUP_SAMPLES = 100  # k: the benchmark setting; the thesis does not fix k
ITERATIONS = 500  # n: thesis Fig 6.8 ("5 runs of 500 iterations")
# The thesis gives neither step size; these are dartboard's choices (a sweep can vary them).
SEARCH_LR = 0.1  # lambda, Algorithm 5 line 10
MODEL_LR = 1e-3  # gamma, Eq 6.6 / Algorithm 5 line 8
WARMUP_MEAN = 0.0  # thesis 6.1.2 random search: alpha ~ N(0, 1)
GATE_GRADIENTS = ("thesis", "log", "unit")  # see dario.search's docstring; "thesis" is Algorithm 5 line 10

#: The study options and their defaults (``gamma``: Eq 6.6's step, DarioConfig ``model_lr``). The tiny
#: ViT: 2x2 patches, 4 blocks of width 32 with 2 heads; 30 epochs of AdamW 3e-3 on the digits' search-train
#: half reach 88.7 % on the val half (measured, 4.6 s on one CPU core).
DARIO_STUDY_DEFAULTS: dict[str, Any] = {
    "model": "vit_tiny_patch16_224", "checkpoint": None, "pretrain_epochs": 30, "pretrain_lr": 3e-3,
    "model_kwargs": {"patch_size": 2, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
    "granularity": "block", "proxy": "parameter_variance", "threshold": THRESHOLD, "gamma": MODEL_LR,
    "search_lr": SEARCH_LR, "iterations": ITERATIONS, "warmup_samples": WARMUP_SAMPLES, "gate_gradient": "thesis",
    "optimizer": "sgd", "keep_probability": None, "epochs": 32,
    "seed": None,  # the ViT's initialisation and the gates' samples; None: the run's seed (torch's initial seed)
}
