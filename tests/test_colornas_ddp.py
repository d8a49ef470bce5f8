"""ColorNAS under DDP: 2 gloo processes (no Ray) with the platform's own distributed pieces
(``ddp_wrapper``, ``average_grads_hook``, ``broadcast_arch``, as in the Ray Train worker), each rank
on its own shard of colour-digits: after a few search steps every channel's alphas are identical on
both ranks (and have moved), though the ranks saw different batches."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

FAST = {"C": 2, "layers": 3, "epochs": 1, "space_options.cell_space": "tiny81", "steps": 1, "multiplier": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from dartboard.data.catalog import load_dataset
    from dartboard.platform.ray.worker import average_grads_hook, broadcast_arch, ddp_wrapper
    from dartboard.searchers.base import seed_everything
    from dartboard.searchers.registry import DataShape, build_searcher

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seed_everything(rank)  # different seeds on purpose: the broadcast makes rank 0's alphas everyone's
        s = build_searcher("colornas-rgby", FAST, DataShape(3, 8, 10))
        s.distribute(ddp_wrapper(torch.device("cpu")), average_grads_hook(world))
        broadcast_arch(s)
        start = [a.detach().clone() for a in s.arch_parameters()]
        data = load_dataset("colour-digits").train
        x = torch.stack([data[i][0] for i in range(rank, 96, world)])  # this rank's shard
        y = torch.stack([data[i][1] for i in range(rank, 96, world)])
        for i in range(0, 48, 16):
            s.step((x[i:i + 8], y[i:i + 8]), (x[i + 8:i + 16], y[i + 8:i + 16]))
        alphas = [a.detach().clone() for a in s.arch_parameters()]
        gathered: list = [None] * world
        dist.all_gather_object(gathered, alphas)
        torch.save({"gathered": gathered, "start": start, "groups": [g.name for g in s.alpha_groups()],
                    "x_sum": float(x.sum())}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_keep_every_channels_alphas_identical(tmp_path):
    mp.start_processes(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["x_sum"] != r1["x_sum"]  # the ranks searched on different shards
    assert r0["groups"] == [f"{c}_{k}" for c in "RGBY" for k in ("normal", "reduce")]
    a0, a1 = r0["gathered"]
    for name, p, q, s in zip(r0["groups"], a0, a1, r0["start"], strict=True):
        assert torch.equal(p, q), name  # bit-identical on both ranks, every channel's group
        assert float((p - s).abs().max()) > 0, name  # and the alpha steps moved it
