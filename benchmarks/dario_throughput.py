"""DARIO benchmark: throughput of a ViT-Base-sized timm model before/after pruning 6 of 12 blocks, and the
time of the search itself (k = 100 warm-up samples, n = 500 iterations).

Random weights (nothing is downloaded). Original and pruned are measured alternately in the same run.
GPU (when CUDA is available): bf16 autocast, batch 256, ViT-B search timing. CPU: a small batch, and the
search timed on a tiny ViT. Target (issue 8): >= 1.65x GPU inference throughput (the thesis measured +69%),
search under 60 s on one GPU.

    python benchmarks/dario_throughput.py [--cpu-batch 4] [--cpu-steps 3] [--skip-search]
"""

from __future__ import annotations

import argparse
import time

import torch

from dartboard.platform.dario_run import compare_throughput
from dartboard.searchers.dario import DarioConfig, DarioSearcher
from dartboard.spaces.genotype import GateGenotype
from dartboard.spaces.vit import count_parameters, create_vit, prune_vit

VIT_B = "vit_base_patch16_224"
KEEP = (0, 2, 4, 6, 8, 10)  # 6 of 12 blocks; the patch embedding and the head stay
TINY = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 6, "num_heads": 4, "num_classes": 10}


def half_pruned(model: torch.nn.Module) -> torch.nn.Module:
    return prune_vit(model, GateGenotype(VIT_B, KEEP, {}, 12, 12))


def throughput(device: str, batch: int, steps: int, amp: torch.dtype | None) -> None:
    model = create_vit(VIT_B).to(device).eval()
    pruned = half_pruned(model)
    print(f"[{device}] ViT-B params {count_parameters(model) / 1e6:.1f}M -> {count_parameters(pruned) / 1e6:.1f}M"
          f", batch {batch}, {'bf16' if amp else 'fp32'}")
    res = compare_throughput(model, pruned, (3, 224, 224), batch, steps=steps, warmup=max(1, steps // 3),
                             device=device, amp_dtype=amp)
    for mode in ("inference", "train"):
        print(f"[{device}] {mode:<9} original {res[f'{mode}_original']:9.1f} img/s   pruned "
              f"{res[f'{mode}_pruned']:9.1f} img/s   ratio {res[f'{mode}_speedup']:.2f}x")


def search_time(name: str, kwargs: dict, device: str, k: int, n: int) -> None:
    model = create_vit(name, **kwargs).to(device).eval()
    cfg = DarioConfig(warmup_samples=k, iterations=n)
    searcher = DarioSearcher(model, cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    searcher.warm_start()
    warm = time.perf_counter() - start
    for _ in range(n):
        searcher.step()
    if device == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    print(f"[{device}] search {name} {kwargs or ''}: k={k} warm-up {warm:.1f} s, n={n} iterations "
          f"{total - warm:.1f} s ({1000 * (total - warm) / max(1, n):.1f} ms/iter), total {total:.1f} s; "
          f"blocks kept at 0.65: {list(searcher.derive(name).blocks_kept)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-batch", type=int, default=4)
    ap.add_argument("--cpu-steps", type=int, default=3)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--skip-search", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    if torch.cuda.is_available():
        throughput("cuda", args.gpu_batch, args.gpu_steps, torch.bfloat16)
        if not args.skip_search:
            search_time(VIT_B, {}, "cuda", args.k, args.n)
    else:
        print("[cuda] no GPU available: GPU throughput and ViT-B search timing skipped")
    throughput("cpu", args.cpu_batch, args.cpu_steps, None)
    if not args.skip_search:
        search_time("vit_tiny_patch16_224", TINY, "cpu", args.k, args.n)


if __name__ == "__main__":
    main()
