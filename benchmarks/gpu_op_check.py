"""Which kernel gives another result on the GPU? Every aten op of a search step, checked against the CPU.

On an H200 the two supernet engines agreed on the logits but not on the weight gradients in float64
(``benchmarks/HISTORY.md``, "Found on the GPU"), while on the CPU they agree. This script runs one forward and
backward of each engine on the GPU in float64 under a dispatch mode that re-runs every aten op (forward and
backward ops alike) on CPU copies of the GPU op's own inputs and compares the outputs. Each op is thus
checked alone, on the same inputs: every op listed computes another function on the GPU (its name, the
shapes and strides of its inputs: what a bug report needs), none is an earlier difference carried along.

    python benchmarks/gpu_op_check.py [--out benchmarks/results/gpu_op_check.json] [--device cuda]

Without CUDA it writes ``{"skipped": true}``; ``--device cpu`` checks the CPU against itself (the
test of the script: nothing may differ).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SKIP = ("empty", "new_empty", "empty_strided", "new_empty_strided", "_local_scalar_dense", "detach", "alias")
TOL = 1e-9  # float64: relative to the largest entry (or 1)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape or not a.is_floating_point():
        return 0.0 if a.shape == b.shape and torch.equal(a.cpu(), b) else float("inf")
    if a.numel() == 0:
        return 0.0
    a = a.detach().cpu()
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) / scale


class CpuShadow(TorchDispatchMode):
    """Re-runs each op on CPU copies of its inputs; records ops whose output differs from the device's."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.records: list[dict[str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SKIP:
            return func(*args, **kwargs)
        cpu_args, cpu_kwargs = tree_map(_to_cpu, (args, kwargs))  # before the op: in-place ops change their inputs
        out = func(*args, **kwargs)
        self.ops += 1
        try:
            cpu_out = _cpu_twin(func)(*cpu_args, **cpu_kwargs)
        except Exception as error:  # an op the CPU cannot run as called (a device argument): noted, not compared
            self.records.append({"op": str(func), "error": f"{type(error).__name__}: {error}"[:300]})
            return out
        outs, _ = tree_flatten(out)
        cpu_outs, _ = tree_flatten(cpu_out)
        worst = max((_diff(o, c) for o, c in zip(outs, cpu_outs, strict=False)
                     if torch.is_tensor(o) and torch.is_tensor(c)), default=0.0)
        if worst > TOL:
            tensors = [a for a in tree_flatten((args, kwargs))[0] if torch.is_tensor(a)]
            self.records.append({"index": self.ops, "op": str(func), "difference": worst,
                                 "inputs": [{"shape": list(t.shape), "stride": list(t.stride()), "dtype": str(t.dtype)}
                                            for t in tensors]})
        return out


def _cudnn_bn_backward(input, grad_out, weight, running_mean, running_var, save_mean, save_invstd, eps, reserve):
    return torch.ops.aten.native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                                                     save_invstd, True, eps, [True, True, True])


def _cpu_twin(func):
    """The op itself, or for cuDNN's BN (no CPU kernel) the native BN of the same arguments: the
    outputs compared are its first three (output, batch mean and inverse std; or the three gradients)."""
    if func is torch.ops.aten.cudnn_batch_norm.default:
        return torch.ops.aten.native_batch_norm.default
    if func is torch.ops.aten.cudnn_batch_norm_backward.default:
        return _cudnn_bn_backward
    return func


def _to_cpu(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().cpu().clone()
    if isinstance(x, torch.device):
        return torch.device("cpu")
    return x


def check(engine: str, device: str) -> dict[str, Any]:
    from dartboard.searchers.registry import DataShape, build_searcher

    torch.manual_seed(0)
    s = build_searcher("darts", {"C": 4, "layers": 2, "engine": engine}, DataShape(1, 8, 10), device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64).to(device)
    y = torch.randint(0, 10, (4,), generator=g).to(device)
    params = [p for p in s.weight_parameters() if p.requires_grad]
    shadow = CpuShadow()
    with shadow:
        out = s.forward(x, [w.detach() for w in s.group_weights()], detach_arch=True)
        loss = s.objective.loss(out, y)
        torch.autograd.grad(loss, params)
    return {"engine": engine, "ops": shadow.ops, "differing": len(shadow.records), "first": shadow.records[:8]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_op_check.json"))
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        args.out.write_text(json.dumps({"skipped": True, "reason": "no CUDA device"}))
        print(f"skipped (no CUDA device); wrote {args.out}")
        return 0
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        report = {"device": args.device, "torch": torch.__version__,
                  "engines": [check(e, args.device) for e in ("reference", "batched")]}
    finally:
        torch.set_default_dtype(dtype)
    args.out.write_text(json.dumps(report, indent=2))
    for r in report["engines"]:
        print(f"{r['engine']}: {r['ops']} ops, {r['differing']} differ from the CPU")
        for rec in r["first"][:3]:
            print(f"  {rec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
