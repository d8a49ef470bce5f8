"""DDP beyond plain DARTS, with the Ray Train worker's own pieces (``ddp_wrapper``,
``average_grads_hook``, ``broadcast_arch``, ``sharded_loaders``, ``replica_digest``) on 2 gloo
processes (torch.multiprocessing, file rendezvous; no Ray cluster):

- CRB (``darts+crb``): ops whose alpha reaches 0 are masked for good, so their weights get no gradient
  (DDP's unused parameters) and the set of masked ops changes during the epoch;
- D-DARTS (``ddarts``): one alpha group and one optimizer per cell, plus the ablation loss's extra
  gradient terms;

after one epoch of sharded steps both ranks hold bit-identical alphas, weights and genotypes (equal
SHA-256 of the raw bytes), the alphas moved, and (CRB) ops were masked on both ranks alike. A global
batch that the ranks cannot share equally is refused, not silently shrunk.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
SAMPLES = 128  # 64 search-train samples: 4 sharded steps of 2 x 8
CASES = {
    # a large alpha lr drives CRB alphas (1/|O| + 1e-4 randn) to 0 within a few steps, so ops get masked
    "darts+crb": {"C": 4, "layers": 2, "epochs": 1, "arch_lr": 0.05},
    "ddarts": {"C": 4, "layers": 2, "epochs": 1},
}


def _rank_main(rank: int, folder: str) -> None:
    """Both searches, one after the other, in one process group (one start-up for both)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        for name, options in CASES.items():
            result = _search(rank, name, options)
            Path(folder, f"{name}.rank{rank}.json").write_text(json.dumps(result))
            # the search's DDP replicas sit in reference cycles: freed now, while the process group lives (freed at
            # the interpreter's exit, after it, one aborted the rank now and then: "terminate called without an
            # active exception", SIGABRT, in about one run in five)
            gc.collect()
    finally:
        dist.destroy_process_group()


def _search(rank: int, name: str, options: dict) -> dict:
    from torch.utils.data import TensorDataset

    from dartboard.data.datasets import DatasetInfo, Splits
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray import worker
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.loop import run_epoch
    from dartboard.searchers.registry import DataShape, build_searcher

    cfg = SearchRunConfig(searcher=name, batch_size=16, seed=0, device="cpu", options=options)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 1, 8, 8, generator=g),
                         torch.randint(0, 10, (SAMPLES,), generator=g))
    splits = Splits(data, data, DatasetInfo("synthetic", 1, 8, 10))
    seed_everything(cfg.seed + rank)  # different per rank: the broadcast must make the alphas equal
    searcher = build_searcher(name, cfg.searcher_options(), DataShape(1, 8, 10), "cpu")
    searcher.distribute(worker.ddp_wrapper(torch.device("cpu")), worker.average_grads_hook(WORLD))
    worker.broadcast_arch(searcher)
    start = [a.detach().clone() for a in searcher.arch_parameters()]
    fraction = cfg.train_fraction if cfg.train_fraction is not None else searcher.train_fraction
    (train, val), samplers, _ = worker.sharded_loaders(cfg, splits, rank, WORLD, fraction)
    for s in samplers:
        s.set_epoch(0)
    metrics = run_epoch(searcher, train, val)
    genotype = searcher.derive()
    digests = worker.gather_digests(worker.replica_digest(searcher, genotype), WORLD)
    moved = max(float((a.detach() - b).abs().max())
                for a, b in zip(searcher.arch_parameters(), start, strict=True))
    groups = searcher.alpha_groups()
    active = [int(searcher.supernet.group_active(i).sum()) for i in range(len(groups))]
    total = sum(int(a.numel()) for a in searcher.arch_parameters())
    return {"digests": digests, "moved": moved, "active": active, "total": total, "groups": len(groups),
            "optimizers": len(getattr(searcher.arch_optimizer, "optimizers", [None])),
            "steps": len(train), "arch_steps": metrics["arch_steps"]}


@pytest.fixture(scope="module")
def ranks_of(tmp_path_factory) -> dict[str, list[dict]]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(str(folder),), nprocs=WORLD, join=True)
    return {name: [json.loads((folder / f"{name}.rank{r}.json").read_text()) for r in range(WORLD)]
            for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_keep_bit_identical_replicas(name, ranks_of):
    ranks = ranks_of[name]
    digests = ranks[0]["digests"]
    assert len(digests) == WORLD and digests[0] == digests[1], "the ranks' alphas, weights or genotypes differ"
    assert ranks[0]["active"] == ranks[1]["active"]
    assert ranks[0]["steps"] == SAMPLES // 2 // 16  # each rank: its half of a global batch of 16, per step
    assert ranks[0]["arch_steps"] >= 2 and ranks[0]["moved"] > 0  # the alphas were all-reduced and stepped
    if name == "darts+crb":  # ops were masked mid-epoch: their weights took no gradient on either rank
        assert sum(ranks[0]["active"]) < ranks[0]["total"]
    else:  # D-DARTS: a group (and an alpha optimizer) per cell
        assert ranks[0]["groups"] == ranks[0]["optimizers"] == CASES[name]["layers"]


# ------------------------------------------------------------------ the global batch is shared equally
def test_a_batch_the_ranks_cannot_share_is_refused():
    from dartboard.errors import UserInputError
    from dartboard.platform.ray.worker import per_rank_batch

    assert per_rank_batch(64, 2) == 32 and per_rank_batch(64, 1) == 64
    with pytest.raises(UserInputError, match="batch_size: 30 is not divisible by the 4 workers"):
        per_rank_batch(30, 4)
    with pytest.raises(UserInputError, match="batch_size: 1 is not divisible by the 2 workers"):
        per_rank_batch(1, 2)


def test_a_study_whose_batch_the_workers_cannot_share_is_refused_before_it_starts():
    from pydantic import ValidationError

    from dartboard.platform.config import StudyConfig

    StudyConfig(batch_size=64, resources={"workers": 2})
    with pytest.raises(ValidationError, match="batch_size: 30 is not divisible by resources.workers 4"):
        StudyConfig(batch_size=30, resources={"workers": 4})
