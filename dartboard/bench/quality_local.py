"""The quality benchmark's trials in this process, without Ray (for a quick look or a machine where
a Ray cluster is too heavy): the same trial options (:func:`dartboard.bench.quality.trial_options`),
the same seeded search split and loaders as a study trial, the architecture derived after every
epoch and the search seconds, scored by the same functions as ``dartboard bench quality``.

The search seconds are this process's CPU seconds (one thread): on a shared, loaded machine the wall
time would inflate the searchers' budget and so random search's, which pays the table's recorded
(idle) training times."""

from __future__ import annotations

import logging
import time
from typing import Any

from dartboard.bench.quality import QualityConfig, curve_from_trial, random_search_records, trial_options

log = logging.getLogger("dartboard")


def run_trial(name: str, seed: int, cfg: QualityConfig, table, splits) -> dict[str, Any]:
    import torch

    from dartboard.data.datasets import make_loader, search_split
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.loop import run_epoch
    from dartboard.searchers.registry import DataShape, build_searcher
    from dartboard.spaces import genotype as gt

    torch.set_num_threads(1)
    seed_everything(seed)
    info = splits.info
    searcher = build_searcher(name, trial_options(name, cfg, table.space), DataShape(info.in_channels, info.input_size,
                                                                          info.num_classes))
    train, val = search_split(splits.train, seed, cfg.train_fraction)
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed, drop_last=True)
    val_loader = make_loader(val, cfg.batch_size, shuffle=True, seed=seed + 1, drop_last=True)
    genotypes, history, seconds = [], [], 0.0
    for _ in range(cfg.epochs):
        start = time.process_time()
        metrics = run_epoch(searcher, train_loader, val_loader)
        seconds += time.process_time() - start
        genotypes.append(gt.to_dict(searcher.derive()))
        history.append({**metrics, "search_seconds": seconds})
        if searcher.stop_requested:
            break
    curve = curve_from_trial(table, genotypes, history)
    log.info("%s seed %d: final regret %.4f after %.1f s", name, seed, curve[-1]["tiny81_regret"], seconds)
    return {"searcher": name, "seed": seed, "options": trial_options(name, cfg, table.space), "curve": curve,
            "seconds": seconds, "stopped_early": len(curve) < cfg.epochs}


def run_local(cfg: QualityConfig, table) -> list[dict[str, Any]]:
    """Every (searcher, seed) trial one after the other, then random search at the same budget."""
    from dartboard.data.catalog import load_dataset

    splits = load_dataset("digits")
    records = [run_trial(name, seed, cfg, table, splits) for name in cfg.searchers if name != "random"
               for seed in cfg.seeds]
    if cfg.random_search:
        records += random_search_records(records, cfg, table)
    return records
