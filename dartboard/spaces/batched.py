"""The ``batched`` supernet engine: the same cells and parameters as the ``reference`` engine (the
per-edge, per-op code of :mod:`dartboard.spaces.cells`), a forward that works per *source node*.

Every edge leaving a node reads the same input, so in a search cell's training forward:

- the parameter-free ops run once per source node for all its outgoing edges: max and average
  pooling and their non-affine BN (the same batch statistics on every edge; each edge's BN still
  gets its own running-statistics update), the stride-1 skip, and ``none`` (a zero, left out);
- the ReLU in front of every convolution of the node runs once (the modules' own, of the first edge);
- the convolutions of one kind (``sep_conv_3x3`` on all outgoing edges, ...) run as one depthwise
  convolution and one grouped pointwise convolution, with one BN call over all their channels; the
  depthwise one is a plain depthwise conv of the input repeated once per edge where oneDNN's fast
  kernel applies (3x3 or smaller, undilated, stride 1) and on CUDA, else one with a channel multiplier;
- a depthwise kernel is cropped to the taps that reach an input pixel (small maps: a 5x5 kernel on a
  2x2 map is a 3x3 one), and a stride-2 dilation-2 one is an undilated conv of the even pixels;
- the mixing sum_o w_o o(x) is one multiply-add per op for all outgoing edges, on one
  ``[B * H * W, E, C]`` matrix; the edges are channel slices of it. A conv op's w[e, o] is the
  scale of its last (non-affine) BN instead, whose backward yields w's gradient along with the
  input's: no separate multiply (fp32 only: under autocast the mixing stays an fp32 multiply);
- tensors are channels-last (faster depthwise convolutions on CPU), and so are the gradients handed
  to BN and conv backward (autograd would build some in the NCHW layout, a path 6-8x slower).

The parameters stay in the reference modules (one state_dict for both engines): the batched forward
concatenates the weights of the edges it batches at each call. It applies only to a plain search
cell in training mode; everything else takes the reference path, explicitly (:func:`batched_path`):
evaluation mode (each edge's running statistics), mixed ops replaced by a modifier (PC-DARTS partial
channels, DARTS- auxiliary skip), masked ops (CRB, DARTS-PT projection) and GDAS's sampled ops
(``skip_zero_weights``). Other ops (stride-2 skip, DARTOpti's extra ops) run per edge inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dartboard.spaces.cells import MixedOp, SearchCell
from dartboard.spaces.depthwise import crop_kernel, depthwise, depthwise_matmul, depthwise_plan
from dartboard.spaces.ops import nchw

ENGINES = ("reference", "batched")
POOLS = ("max_pool_3x3", "avg_pool_3x3")
CONV_KINDS = ("sep_conv", "dil_conv")  # SepConv = two DilConvs; DilConv = ReLU, depthwise, pointwise, BN
CHANNELS_LAST = torch.channels_last


def use_engine(module: nn.Module, engine: str) -> int:
    """Switch every search cell of ``module`` to ``engine``; returns the number of cells switched."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    cells = [m for m in module.modules() if isinstance(m, SearchCell)]
    for cell in cells:
        cell.__class__ = BatchedSearchCell if engine == "batched" else SearchCell
    return len(cells)


def batched_path(cell: SearchCell, weights: torch.Tensor | None = None) -> str | None:
    """None when the batched forward applies to ``cell`` (with mixing ``weights``) now, else why the
    reference path runs. Ops skipped when their weight is 0 (GDAS's samples, DARTS-PT's projected
    ops) give no gradient to that weight on the reference path: one host read of the weights tells."""
    if not cell.training:
        return "evaluation mode (per-edge running statistics)"
    skip_zero = False
    for mixed in cell.mixed:
        if type(mixed) is not MixedOp:
            return f"mixed op {type(mixed).__name__} (a mixed-op modifier)"
        if len(mixed.active) != len(mixed.ops):
            return "masked ops"
        skip_zero = skip_zero or mixed.skip_zero_weights
    if skip_zero and (weights is None or bool((weights.detach() == 0).any())):
        return "sampled ops (zero weights skipped)"
    return None


class BatchedSearchCell(SearchCell):
    """A :class:`SearchCell` whose training forward batches the edges of each source node."""

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        s0, s1 = s0.contiguous(memory_format=CHANNELS_LAST), s1.contiguous(memory_format=CHANNELS_LAST)
        if batched_path(self, weights) is not None:
            return super().forward(s0, s1, weights)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        plans = self._plans()
        incoming: list[list[torch.Tensor]] = [[] for _ in range(self.steps)]
        for src in range(2 + self.steps):
            if src >= 2:  # node src is complete: every edge into it left an earlier node
                node = _sum(incoming[src - 2])
                if self.node_bn is not None:
                    node = self.node_bn[src - 2](node)
                states.append(node)
            plan = plans[src]
            if plan is None:
                continue
            mixed = _edges_from(states[src], plan, weights[self._index(plan.edges, weights.device)])
            for k, e in enumerate(plan.edges):
                incoming[self.edges[e][1] - 2].append(mixed[k])
        return torch.cat(states[-self.multiplier:], dim=1)

    def _plans(self) -> list[_NodePlan | None]:
        """Per source node, the modules its batched forward calls (None: no edge leaves it), made once
        per set of mixed-op modules: the lookups cost 3-6 % of a step (README, per-node plan)."""
        key = tuple(map(id, self.mixed))
        cached = self.__dict__.get("_node_plans")
        if cached is None or cached[0] != key:
            plans = []
            for src in range(2 + self.steps):
                out = [e for e, (s, _) in enumerate(self.edges) if s == src]
                plans.append(_node_plan(out, [self.mixed[e] for e in out]) if out else None)
            cached = self.__dict__["_node_plans"] = (key, plans)
        return cached[1]

    def _index(self, edges: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``edges`` as an index tensor on ``device``, made once: indexing with a list copies it from
        the host at every call, which a CUDA graph capture refuses."""
        cache = self.__dict__.setdefault("_edge_index", {})
        key = (edges, device)
        if key not in cache:
            cache[key] = torch.tensor(edges, device=device)
        return cache[key]


@dataclass(frozen=True)
class _Stage:
    """One DilConv (ReLU, depthwise, pointwise, non-affine BN) on each of E edges: the modules by role."""

    relu: nn.Module  # the first edge's (all edges' are alike)
    dw: tuple[nn.Conv2d, ...]
    pw: tuple[nn.Conv2d, ...]
    bn: tuple[nn.BatchNorm2d, ...]


def _stage(convs: Sequence[nn.Sequential]) -> _Stage:
    return _Stage(convs[0][0], tuple(c[1] for c in convs), tuple(c[2] for c in convs), tuple(c[3] for c in convs))


@dataclass(frozen=True)
class _NodePlan:
    """The edges leaving one node and, per candidate op, what their batched forward calls: ``("pool",
    (pool, BNs))``, ``("skip", None)``, ``("conv", (ReLU, stages))`` or ``("other", per-edge modules)``.
    ``ops`` is None where the edges have different candidate ops (then each edge runs alone)."""

    edges: tuple[int, ...]
    mixed: tuple[MixedOp, ...]
    ops: tuple[tuple[int, str, Any], ...] | None


def _node_plan(edges: Sequence[int], mixed: Sequence[MixedOp]) -> _NodePlan:
    primitives = mixed[0].primitives
    if any(m.primitives != primitives for m in mixed):
        return _NodePlan(tuple(edges), tuple(mixed), None)
    ops: list[tuple[int, str, Any]] = []
    for o, name in enumerate(primitives):
        if name == "none":  # w * 0: no output, and no gradient to w either way
            continue
        modules = [m.ops[o] for m in mixed]
        if name in POOLS:
            ops.append((o, "pool", (modules[0][0], tuple(op[1] for op in modules))))
        elif name == "skip_connect" and mixed[0].stride == 1:
            ops.append((o, "skip", None))
        elif name.startswith(CONV_KINDS):  # SepConv = two DilConvs; DilConv = ReLU, depthwise, pointwise, BN
            stages = ((_stage([op[0] for op in modules]), _stage([op[1] for op in modules]))
                      if name.startswith("sep_conv") else (_stage(modules),))
            ops.append((o, "conv", (stages[0].relu, stages)))
        else:  # an op this engine does not batch (stride-2 skip, DARTOpti's ops): per edge
            ops.append((o, "other", tuple(modules)))
    return _NodePlan(tuple(edges), tuple(mixed), tuple(ops))


def _sum(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _edges_from(h: torch.Tensor, plan: _NodePlan, weights: torch.Tensor) -> list[torch.Tensor]:
    """The E edges leaving one node: sum_o w[e, o] o_e(h) for each (DARTS Eq 2).

    The mixing works on one ``[B * H' * W', E * C]`` matrix (a channels-last ``[B, E * C, H', W']``
    tensor, edge-major channels): each op's output of all edges is one block of it, or one
    ``[B * H' * W', 1, C]`` block broadcast over the edges (pooling, skip), and each op's mixing
    weight one row of E * C values; the edges are channel slices of the result."""
    mixed = plan.mixed
    if plan.ops is None:  # edges of one node with other ops: per edge
        return [m(h, w) for m, w in zip(mixed, weights, strict=True)]
    n_edges, C = len(mixed), mixed[0].C
    activated: dict[type, torch.Tensor] = {}  # the convs' activation (ReLU) of h, once per module type
    columns = weights.t()[:, None, :, None]  # op o's weights as [1, E, 1]
    # a conv op's weights as its last BN's scale, one per channel (materialised rows: BN reads its weight
    # densely); under autocast the mixing stays an fp32 multiply
    scales = None if torch.is_autocast_enabled(h.device.type) else weights.t().repeat_interleave(C, dim=1)
    total = shape = None
    repeats: dict[tuple, torch.Tensor] = {}  # h repeated once per edge, made once for every conv kind (_repeated)
    for o, kind, modules in plan.ops:
        scale = None
        if kind == "pool":
            out, shared = _shared_pool(h, *modules), True
        elif kind == "skip":
            out, shared = h, True
        elif kind == "conv":
            act, stages = modules
            if type(act) not in activated:
                activated[type(act)] = act(h)
            if scales is not None:  # w[e, o] as the last BN's scale: its backward gives w's gradient with the input's
                scale = scales[o]
            out, shared = _conv_stack(activated[type(act)], stages, scale, repeats), False
        else:
            out, shared = torch.cat([_channels_last_grad(op(h)) for op in modules], dim=1), False
        shape = out.shape
        rows = _rows(out, 1 if shared else n_edges)  # [B * H' * W', E or 1, C]
        # fp32 mixing under autocast (bf16 rows promote); the conv ops' rows come scaled by w[:, o]
        total = _mix(total, rows, None if scale is not None else columns[o])
    if total is None:  # only `none`: zeros of the output shape
        stride = mixed[0].stride
        return [h[:, :, ::stride, ::stride].mul(0.0) for _ in mixed]
    batch, _, height, width = shape
    total = total.view(batch, height, width, n_edges * C).permute(0, 3, 1, 2)  # a view: gradients stay channels-last
    return list(total.split(C, dim=1))


def _mix(total: torch.Tensor | None, rows: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``total + rows * w`` (``rows`` alone when ``w`` is None, as it is already scaled)."""
    if w is None:
        return rows if total is None else total + rows
    return rows * w if total is None else torch.addcmul(total, rows, w)


def _rows(x: torch.Tensor, n_edges: int) -> torch.Tensor:
    """A channels-last ``[B, E * C, H, W]`` tensor as ``[B * H * W, E, C]`` (a view)."""
    batch, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch * height * width, n_edges, channels // n_edges)


class _GradLayout(torch.autograd.Function):
    """Identity whose backward hands on the gradient with the given strides. The gradient of one
    block of a concatenation is a strided slice (the per-edge ops' outputs below); a channels-last BN
    backward on a gradient that is not channels-last takes a slow path (6-8x slower)."""

    @staticmethod
    def forward(ctx, x, strides):
        ctx.strides = strides
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.stride() == ctx.strides:
            return grad, None
        out = torch.empty_strided(grad.shape, ctx.strides, dtype=grad.dtype, device=grad.device)
        return out.copy_(grad), None


def _channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x``; its gradient in ``x``'s own layout: channels-last where ``x`` is (the CPU's convolutions and
    BNs here give channels-last outputs), else ``x``'s. Never a layout other than the output's: the BN
    backward that gets it also reads the BN's saved input, and on CUDA an op may give NCHW outputs, where
    a channels-last gradient would meet an NCHW input."""
    return _GradLayout.apply(x, x.stride())


def _shared_pool(h: torch.Tensor, pool: nn.Module, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """Pooling then non-affine BN, once for all edges; every edge's BN records the batch statistics
    (the unbiased variance recovered from the BN's own inverse standard deviation: no second pass)."""
    pooled = pool(h).contiguous(memory_format=CHANNELS_LAST)  # the layout of its gradient (see _rows)
    out, mean, invstd = torch.native_batch_norm(pooled, None, None, None, None, True, 0.0, bns[0].eps)
    with torch.no_grad():
        n = pooled.numel() // pooled.shape[1]
        var = (invstd.double().pow(-2) - bns[0].eps) * (n / max(n - 1, 1))
        var, mean = var.to(bns[0].running_var.dtype), mean.to(bns[0].running_mean.dtype)  # autocast: bf16 input
        momentum = bns[0].momentum
        torch._foreach_lerp_([b.running_mean for b in bns], [mean] * len(bns), momentum)
        torch._foreach_lerp_([b.running_var for b in bns], [var] * len(bns), momentum)
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return out


def _conv_stack(relu: torch.Tensor, stages: Sequence[_Stage], scale: torch.Tensor | None,
                repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``[B, E * C, H', W']`` (edge-major channels): one DilConv (or SepConv: two stages) per edge on a
    shared ReLU'd input, batched; the last BN's output times ``scale`` (one value per channel) when given;
    ``repeats``: the node's repeated inputs so far (:func:`_repeated`)."""
    if len(stages) == 1:
        out = _dil_conv_shared(relu, stages[0], scale, repeats)
    else:
        out = _dil_conv_grouped(_dil_conv_shared(relu, stages[0], None, repeats), stages[1], scale)
    if conv_plan(out.device).stack_nchw:  # back to channels-last for the mixing; the gradient back to NCHW
        out = _channels_last_grad(out).contiguous(memory_format=CHANNELS_LAST)
    return out


@dataclass(frozen=True)
class ConvPlan:
    """How the batched engine runs its convolutions on one device type (:data:`CONV_PLANS`).

    ``multiplier``: the 5x5 and dilated depthwise convs of several edges as one conv with a channel multiplier
    (else on the input repeated once per edge; faster on the CPU, 15 % slower for the graphed darts step on
    an H200: benchmarks/results/gpu_profile_h200_run2.json). ``pointwise``: the edges' 1x1 convs as one
    ``grouped`` conv or one ``block_diagonal`` dense conv (zeros off the edges' blocks: E times the arithmetic
    in one plain conv). ``depthwise_nchw``: depthwise convs on NCHW copies (:func:`~dartboard.spaces.ops.nchw`:
    PyTorch's own depthwise kernels on CUDA instead of cuDNN's NHWC ones), their outputs back to channels-last.
    CUDA's default has both since an H200 timed them (graphed darts step 145.1 -> 123.1 ms first order,
    416.3 -> 348.9 ms second: benchmarks/results/gpu_profile_h200_run3.json); both are slower on the CPU.
    ``stack_nchw`` (with ``depthwise_nchw``): the whole conv op (depthwise and pointwise convs, BNs, the second
    ReLU) on NCHW tensors, back to channels-last once, for the mixing, instead of around every depthwise conv.
    ``matmul_limit``: a depthwise conv with a channel multiplier runs as per-channel matrix products
    (:func:`~dartboard.spaces.depthwise.depthwise_matmul`, edge-major output: no reorder copy) where its input's
    pixels times channels per (cropped) kernel tap, H * W * C / (kh * kw), are at most this; 0: never. The
    products' work grows with the map (H * W per output pixel, against kh * kw taps), oneDNN's channels-last
    kernels run well with many channels: on the CPU, per conv of the digits step (forward and backward), 1.3-4x
    faster than oneDNN on 4x4 maps and for 5x5 kernels on 8x8 maps with 8 or 16 channels (9 to 57 here), even to
    slower for dilated 3x3 kernels on 8x8 maps (57), 0.5-2x at 8x8 with 64 channels (164, the published scale)."""

    multiplier: bool = True
    pointwise: str = "grouped"
    depthwise_nchw: bool = False
    stack_nchw: bool = False
    matmul_limit: float = 0.0

    def __post_init__(self) -> None:
        if self.pointwise not in ("grouped", "block_diagonal"):
            raise ValueError(f"ConvPlan.pointwise: expected 'grouped' or 'block_diagonal', got {self.pointwise!r}")
        if not self.matmul_limit >= 0:
            raise ValueError(f"ConvPlan.matmul_limit: expected a number >= 0 (0: never), got {self.matmul_limit!r}")
        if self.stack_nchw and not self.depthwise_nchw:
            raise ValueError("ConvPlan.stack_nchw: runs the depthwise convs on NCHW tensors too; "
                             "it needs depthwise_nchw=True")


#: Per device type; a type not listed gets ``ConvPlan()``.
CONV_PLANS = {"cpu": ConvPlan(matmul_limit=64.0),
              "cuda": ConvPlan(multiplier=False, pointwise="block_diagonal", depthwise_nchw=True)}


def conv_plan(device: torch.device) -> ConvPlan:
    return CONV_PLANS.get(device.type, ConvPlan())


def matmul_depthwise(plan: ConvPlan, shape: Sequence[int], kernel: Sequence[int]) -> bool:
    """Whether a multiplier depthwise conv of an input of ``shape`` (``[B, C, H, W]``) with a (cropped) ``kernel``
    runs as per-channel matrix products under ``plan`` (:attr:`ConvPlan.matmul_limit`)."""
    _, channels, height, width = shape
    return height * width * channels <= plan.matmul_limit * kernel[0] * kernel[1]


def _conv_layout(y: torch.Tensor, plan: ConvPlan) -> torch.Tensor:
    """A conv's output in the layout of the conv stack: NCHW under ``stack_nchw``, else channels-last (like the
    gradient the mixing hands back; a no-op on the CPU, whose convs keep channels-last, while a CUDA conv may
    give NCHW)."""
    return nchw(y) if plan.stack_nchw else y.contiguous(memory_format=CHANNELS_LAST)


def _dil_conv_shared(x: torch.Tensor, stage: _Stage, scale: torch.Tensor | None,
                     repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """The depthwise convs of E DilConvs on one input, edge-major output channels (e * C + c) for the
    grouped pointwise conv. Where the (cropped) kernel takes oneDNN's fast depthwise path (3x3 or
    smaller, undilated, stride 1), or the device's :class:`ConvPlan` says so, the input is repeated E
    times along the channels and convolved with one filter per channel; elsewhere one conv with channel
    multiplier E (output channel c * E + e) is reordered."""
    plan, dw = conv_plan(x.device), stage.dw[0]
    n, C = len(stage.dw), x.shape[1]
    x, crop, stride, padding, dilation = depthwise_plan(x, dw)
    kernel = dw.kernel_size if crop is None else (crop[1] - crop[0] + 1, crop[3] - crop[2] + 1)
    fast_depthwise = stride == (1, 1) and max(kernel) <= 3 and (dilation == (1, 1) or kernel == (1, 1))
    if fast_depthwise or not plan.multiplier:
        x = _repeated(x, n, plan, repeats)
        weight = crop_kernel(torch.cat([d.weight for d in stage.dw]), crop)
        dilation = (1, 1) if kernel == (1, 1) else dilation
        y = F.conv2d(x, weight, None, stride, padding, dilation, n * C)
        return _pointwise_bn(_conv_layout(y, plan), stage, scale)
    weight = crop_kernel(torch.stack([d.weight for d in stage.dw], dim=1).reshape(C * n, 1, *dw.kernel_size), crop)
    if matmul_depthwise(plan, x.shape, kernel):
        return _pointwise_bn(depthwise_matmul(x, weight, stride, padding, dilation, edge_major=True), stage, scale)
    y = F.conv2d(nchw(x) if plan.depthwise_nchw else x, weight, None, stride, padding, dilation, C)
    batch, _, height, width = y.shape
    y = y.permute(0, 2, 3, 1).reshape(batch, height, width, C, n).transpose(3, 4)
    y = y.reshape(batch, height, width, n * C).permute(0, 3, 1, 2)  # channels-last, edge-major
    return _pointwise_bn(y, stage, scale)


def _repeated(x: torch.Tensor, n: int, plan: ConvPlan, repeats: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``x`` repeated ``n`` times along the channels (edge-major): NCHW under ``depthwise_nchw``, else
    channels-last. Made once per node for every conv kind that takes it (``repeats``, keyed by the memory
    ``x`` views: a stride-2 dilated conv's even pixels are a new view of the same memory each time): the
    copies and the memory they hold (13 % of a step's peak with CUDA's plan) are not made again."""
    key = (x.data_ptr(), x.shape, x.stride(), n)
    if key not in repeats:
        if plan.depthwise_nchw:
            repeats[key] = x.repeat(1, n, 1, 1)  # standard NCHW strides whatever x's layout
        else:
            batch, channels, height, width = x.shape
            rows = x.permute(0, 2, 3, 1).unsqueeze(3).expand(batch, height, width, n, channels)
            repeats[key] = rows.reshape(batch, height, width, n * channels).permute(0, 3, 1, 2)  # channels-last
    return repeats[key]


def _dil_conv_grouped(x: torch.Tensor, stage: _Stage, scale: torch.Tensor | None = None) -> torch.Tensor:
    """E DilConvs (ReLU, depthwise, pointwise, BN), each on its own group of channels of ``x`` (edge-major):
    one depthwise conv. On NCHW copies the ReLU comes after the copy, so that its saved output is the conv's
    saved input (with the ReLU first, both were kept: on an H200 the step's peak rose from 4919 to 6288 MiB)."""
    plan, weight = conv_plan(x.device), torch.cat([d.weight for d in stage.dw])
    if plan.depthwise_nchw:
        x = nchw(x)
    y = depthwise(stage.relu(x), weight, stage.dw[0], groups=weight.shape[0])
    return _pointwise_bn(_conv_layout(y, plan), stage, scale)


def _pointwise_bn(y: torch.Tensor, stage: _Stage, scale: torch.Tensor | None = None) -> torch.Tensor:
    plan, groups = conv_plan(y.device), len(stage.pw)
    if groups > 1 and plan.pointwise == "block_diagonal":  # one dense conv, zeros off the blocks
        weight, groups = _block_diagonal([p.weight for p in stage.pw]), 1
    else:
        weight = torch.cat([p.weight for p in stage.pw])
    # as a batched matrix product it was 1.8x slower on an H200 and 3-5 % on the CPU (gpu_profile_h200_run2.json)
    y = _conv_layout(F.conv2d(y, weight, groups=groups), plan)
    return batch_norm_many(y, stage.bn, scale)


def _block_diagonal(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[E * c_out, E * c_in, 1, 1]``: the E 1x1 conv weights on the diagonal, zeros elsewhere, as the stacked
    weights times a 0/1 mask (the same values as ``torch.block_diag``). The gradient then comes back as one
    contiguous ``[E, c_out, c_in]`` tensor, whose slices the parameters take as their gradients; those of
    ``torch.block_diag`` are slices of the larger matrix with other strides, which autograd copies into each
    parameter's layout (one copy per edge and weight step), and its forward is one copy per edge too."""
    n, (c_out, c_in) = len(weights), weights[0].shape[:2]
    stacked = torch.stack([w.view(c_out, c_in) for w in weights])  # [E, c_out, c_in]
    mask = _identity(n, stacked.device, stacked.dtype)
    return (stacked[:, :, None, :] * mask[:, None, :, None]).reshape(n * c_out, n * c_in, 1, 1)


_IDENTITIES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def _identity(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.eye(n)``, made once per size, device and dtype (not one kernel per block-diagonal weight and pass;
    the eager steps before a CUDA graph's capture make it, so a replay reads it and allocates nothing)."""
    key = (n, device, dtype)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = torch.eye(n, device=device, dtype=dtype)
    return _IDENTITIES[key]


def batch_norm_many(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d], scale: torch.Tensor | None = None) -> torch.Tensor:
    """One training-mode BN call over the channels of several non-affine BNs (concatenated in order),
    its output times ``scale`` (one value per channel) when given; each BN's running statistics get
    exactly the update its own call would give them."""
    if len(bns) == 1 and scale is None:
        return bns[0](x)
    means, variances = [b.running_mean for b in bns], [b.running_var for b in bns]
    mean, var = (means[0], variances[0]) if len(bns) == 1 else (torch.cat(means), torch.cat(variances))
    out = F.batch_norm(x, mean, var, scale, None, True, bns[0].momentum, bns[0].eps)
    with torch.no_grad():
        if len(bns) > 1:  # the update went into the concatenation (a single BN: into its own buffers)
            sizes = [m.numel() for m in means]
            torch._foreach_copy_(means, list(mean.split(sizes)))
            torch._foreach_copy_(variances, list(var.split(sizes)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return out
