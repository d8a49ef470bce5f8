"""Two-rank DDP (gloo, CPU, no Ray) keeps NASiam's alphas identical: the Ray worker's own pieces
(``ddp_wrapper``, ``average_grads_hook``) distribute the searcher, each rank sees other data."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _rank(rank: int, port: int, name: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from dartboard.platform.ray.worker import average_grads_hook, ddp_wrapper
    from dartboard.searchers.registry import DataShape, build_searcher

    torch.manual_seed(0)
    options = {"C": 4, "epochs": 1, "projector_layers": 2, "predictor_layers": 2 if name == "nasiam-simsiam" else 0}
    if name == "nasiam-moco":
        options["objective.queue_size"] = 32
    s = build_searcher(name, options, DataShape(1, 8, 10))
    start = [a.detach().clone() for a in s.arch_parameters()]
    s.distribute(ddp_wrapper(torch.device("cpu")), average_grads_hook(WORLD))
    g = torch.Generator().manual_seed(100 + rank)  # every rank its own shard
    batches = [(torch.randn(8, 2, 1, 8, 8, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    for i in range(2):
        s.step(batches[2 * i], batches[2 * i + 1])
    s.end_epoch()
    torch.save((start, [a.detach() for a in s.arch_parameters()]), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_keep_identical_alphas(tmp_path):
    """MoCo: the case with the most state (key encoder, queue buffers) next to DDP."""
    mp.spawn(_rank, args=(_port(), "nasiam-moco", str(tmp_path)), nprocs=WORLD, join=True)
    (start, a), (_, b) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(start, a, strict=True))  # the alphas moved
