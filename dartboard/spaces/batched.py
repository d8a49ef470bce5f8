"""The ``batched`` supernet engine: the same cells and parameters as the ``reference`` engine (the
per-edge, per-op code of :mod:`dartboard.spaces.cells`), a forward that works per *source node*.

Every edge leaving a node reads the same input, so in a search cell's training forward:

- the parameter-free ops run once per source node for all its outgoing edges: max and average
  pooling and their non-affine BN (the same batch statistics on every edge; each edge's BN still
  gets its own running-statistics update), the stride-1 skip, and ``none`` (a zero, left out);
- the ReLU in front of every convolution of the node runs once (the modules' own, of the first edge);
- the stride-2 skips (``FactorizedReduce``: two 1x1 convs of the even and the odd pixels) of all its edges run
  as two matrix products of that ReLU's output and one BN call, and so does the FactorizedReduce that
  preprocesses a cell's first input after a reduction cell;
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
- a cell's two inputs, where they have one shape, each sample's within the device plan's ``merge_limit`` (small
  maps), and their edges the same batched ops, run as one source node: side by side on the channels, edge j of
  input s as edge (j, s) of the pair (:func:`_merged_plan`; depthwise convs, pools and BNs are per channel, the
  pointwise convs and stride-2 skips per edge);
- tensors are channels-last (faster depthwise convolutions on CPU), and so are the gradients handed
  to BN and conv backward (autograd would build some in the NCHW layout, a path 6-8x slower).

The parameters stay in the reference modules (one state_dict for both engines): the batched forward
concatenates the weights of the edges it batches at each call. It applies only to a plain search
cell in training mode; everything else takes the reference path, explicitly (:func:`batched_path`):
evaluation mode (each edge's running statistics), mixed ops replaced by a modifier (PC-DARTS partial
channels, DARTS- auxiliary skip), masked ops (CRB, DARTS-PT projection) and GDAS's sampled ops
(``skip_zero_weights``). Other ops (DARTOpti's extra ops, a stride-2 skip with an affine BN) run per edge
inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dartboard.spaces.batched_convs import (  # noqa: F401 - re-exported: the conv plans and the BN helper
    CHANNELS_LAST,
    CONV_PLANS,
    ConvPlan,
    _channels_last_grad,
    _conv_stack,
    _stage,
    batch_norm_many,
    conv_plan,
    factorized_reduce_many,
    matmul_depthwise,
    reducible,
)
from dartboard.spaces.cells import MixedOp, SearchCell

ENGINES = ("reference", "batched")
POOLS = ("max_pool_3x3", "avg_pool_3x3")
CONV_KINDS = ("sep_conv", "dil_conv")  # SepConv = two DilConvs; DilConv = ReLU, depthwise, pointwise, BN


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
        pre0 = self.preprocess0
        if conv_plan(s0.device).reduce_many and reducible([pre0]):  # after a reduction cell: a FactorizedReduce
            states = [factorized_reduce_many(pre0.relu(s0), [pre0], None), self.preprocess1(s1)]
        else:
            states = [pre0(s0), self.preprocess1(s1)]
        plans, merged = self._plans()
        incoming: list[list[torch.Tensor]] = [[] for _ in range(self.steps)]
        if merged is not None and _merges(merged, states, conv_plan(s0.device)):
            plans = [merged, None, *plans[2:]]
            # the inputs' channels side by side; each input's gradient a channels-last copy, not a slice of the
            # concatenation's (a BN backward on a strided gradient takes a slow path)
            states = [torch.cat([_channels_last_grad(t) for t in states], dim=1), None]
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

    def _plans(self) -> tuple[list[_NodePlan | None], _NodePlan | None]:
        """Per source node, the modules its batched forward calls (None: no edge leaves it), and the two inputs'
        edges as one plan (:func:`_merged_plan`, or None), made once per set of mixed-op modules: the lookups
        cost 3-6 % of a step (``benchmarks/HISTORY.md``, per-node plan)."""
        key = tuple(map(id, self.mixed))
        cached = self.__dict__.get("_node_plans")
        if cached is None or cached[0] != key:
            plans = []
            for src in range(2 + self.steps):
                out = [e for e, (s, _) in enumerate(self.edges) if s == src]
                plans.append(_node_plan(out, [self.mixed[e] for e in out]) if out else None)
            cached = self.__dict__["_node_plans"] = (key, plans, _merged_plan(plans[:2]))
        return cached[1], cached[2]

    def _index(self, edges: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``edges`` as an index tensor on ``device``, made once: indexing with a list copies it from
        the host at every call, which a CUDA graph capture refuses."""
        cache = self.__dict__.setdefault("_edge_index", {})
        key = (edges, device)
        if key not in cache:
            cache[key] = torch.tensor(edges, device=device)
        return cache[key]


@dataclass(frozen=True)
class _NodePlan:
    """The edges leaving one node and, per candidate op, what their batched forward calls: ``("pool",
    (pool, BNs))``, ``("skip", None)``, ``("conv", (ReLU, stages))`` or ``("other", per-edge modules)``.
    ``ops`` is None where the edges have different candidate ops (then each edge runs alone)."""

    edges: tuple[int, ...]
    mixed: tuple[MixedOp, ...]
    ops: tuple[tuple[int, str, Any], ...] | None
    sources: int = 1  # S: the plan of S source nodes' edges on their concatenation, edges in (j, s) order


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
        elif name == "skip_connect" and reducible(modules):
            ops.append((o, "reduce", tuple(modules)))
        elif name.startswith(CONV_KINDS):  # SepConv = two DilConvs; DilConv = ReLU, depthwise, pointwise, BN
            stages = ((_stage([op[0] for op in modules]), _stage([op[1] for op in modules]))
                      if name.startswith("sep_conv") else (_stage(modules),))
            ops.append((o, "conv", (stages[0].relu, stages)))
        else:  # an op this engine does not batch (stride-2 skip, DARTOpti's ops): per edge
            ops.append((o, "other", tuple(modules)))
    return _NodePlan(tuple(edges), tuple(mixed), tuple(ops))


#: The op kinds whose batched forward runs on several sources' concatenated channels as one source's.
MERGEABLE = frozenset({"pool", "skip", "conv", "reduce"})


def _merged_plan(plans: Sequence[_NodePlan | None]) -> _NodePlan | None:
    """The edges of several source nodes (the cell's two inputs) as one plan on their concatenated channels, edge
    (j, s) the j-th edge of source s, in (j, s) order; None unless every source has the same number of edges, the
    same candidate ops and stride and only ops of :data:`MERGEABLE` kinds."""
    if any(p is None or p.ops is None for p in plans) or len({len(p.edges) for p in plans}) != 1:
        return None
    first = plans[0].mixed[0]
    if any(m.primitives != first.primitives or m.stride != first.stride or m.C != first.C
           for p in plans for m in p.mixed):
        return None
    if any(kind not in MERGEABLE for p in plans for _, kind, _ in p.ops):
        return None
    order = [(p.edges[j], p.mixed[j]) for j in range(len(plans[0].edges)) for p in plans]
    merged = _node_plan([e for e, _ in order], [m for _, m in order])
    return _NodePlan(merged.edges, merged.mixed, merged.ops, len(plans))


def _merges(merged: _NodePlan, states: Sequence[torch.Tensor], plan: ConvPlan) -> bool:
    """Whether the cell's two inputs run as one source now: equal shapes, each sample's input within the device
    plan's ``merge_limit``, and stride-2 skips (if any) as the products that take several sources."""
    return (states[0].shape == states[1].shape and states[0].numel() <= plan.merge_limit * states[0].shape[0]
            and (plan.reduce_many or all(kind != "reduce" for _, kind, _ in merged.ops)))


def _sum(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _edges_from(h: torch.Tensor, plan: _NodePlan, weights: torch.Tensor) -> list[torch.Tensor]:
    """The E edges leaving one node (or the S = ``plan.sources`` nodes whose channels ``h`` holds side by side, J
    edges each, E = J * S in (j, s) order): sum_o w[e, o] o_e(h) for each (DARTS Eq 2).

    The mixing works on one ``[B * H' * W', J, S, C]`` array (a channels-last ``[B, E * C, H', W']``
    tensor, edge-major channels): each op's output of all edges is one block of it, or one
    ``[B * H' * W', 1, S, C]`` block broadcast over each source's edges (pooling, skip), and each op's mixing
    weight one row of E values broadcast over C; the edges are channel slices of the result."""
    mixed = plan.mixed
    if plan.ops is None:  # edges of one node with other ops: per edge
        return [m(h, w) for m, w in zip(mixed, weights, strict=True)]
    n_edges, C, S = len(mixed), mixed[0].C, plan.sources
    activated: dict[type, torch.Tensor] = {}  # the convs' activation (ReLU) of h, once per module type
    columns = weights.t().view(-1, 1, n_edges // S, S, 1)  # op o's weights as [1, J, S, 1] (a view)
    # a conv op's weights as its last BN's scale, one per channel (materialised rows: BN reads its weight
    # densely); under autocast the mixing stays an fp32 multiply
    scales = None if torch.is_autocast_enabled(h.device.type) else weights.t().repeat_interleave(C, dim=1)
    total = shape = None
    repeats: dict[tuple, torch.Tensor] = {}  # h repeated once per edge, made once for every conv kind (_repeated)
    reduce_many = conv_plan(h.device).reduce_many
    for o, kind, modules in plan.ops:
        # a conv op's (and the products' stride-2 skip's) w[e, o] is its last BN's scale: its backward gives w's
        # gradient with the input's; the other ops' outputs are mixed by a multiply
        scaled = scales is not None and (kind == "conv" or (kind == "reduce" and reduce_many))
        out, shared = _op_output(h, kind, modules, scales[o] if scaled else None, activated, repeats, reduce_many,
                                 S)
        shape = out.shape
        rows = _rows(out, 1 if shared else n_edges // S, S)  # [B * H' * W', J or 1, S, C]
        # fp32 mixing under autocast (bf16 rows promote); the conv ops' rows come scaled by w[:, o]
        total = _mix(total, rows, None if scaled else columns[o])
    if total is None:  # only `none`: zeros of the output shape
        stride = mixed[0].stride
        return [h[:, :C, ::stride, ::stride].mul(0.0) for _ in mixed]
    batch, _, height, width = shape
    total = total.view(batch, height, width, n_edges * C).permute(0, 3, 1, 2)  # a view: gradients stay channels-last
    return list(total.split(C, dim=1))


def _op_output(h: torch.Tensor, kind: str, modules: Any, scale: torch.Tensor | None,
               activated: dict[type, torch.Tensor], repeats: dict[tuple, torch.Tensor], reduce_many: bool,
               sources: int = 1) -> tuple[torch.Tensor, bool]:
    """One op of a node's plan on all its edges: (output, shared), ``shared`` where one output serves every edge
    (pooling, skip); ``activated``: the node's ReLU per module type, made once."""
    if kind == "pool":
        return _shared_pool(h, *modules, sources), True
    if kind == "skip":
        return h, True
    if kind == "conv" or (kind == "reduce" and reduce_many):
        act = modules[0] if kind == "conv" else modules[0].relu
        if type(act) not in activated:
            activated[type(act)] = act(h)
        if kind == "conv":
            return _conv_stack(activated[type(act)], modules[1], scale, repeats), False
        return factorized_reduce_many(activated[type(act)], modules, scale, sources), False
    return torch.cat([_channels_last_grad(op(h)) for op in modules], dim=1), False  # per edge


def _mix(total: torch.Tensor | None, rows: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``total + rows * w`` (``rows`` alone when ``w`` is None, as it is already scaled)."""
    if w is None:
        return rows if total is None else total + rows
    return rows * w if total is None else torch.addcmul(total, rows, w)


def _rows(x: torch.Tensor, n_edges: int, sources: int = 1) -> torch.Tensor:
    """A channels-last ``[B, J * S * C, H, W]`` tensor as ``[B * H * W, J, S, C]`` (a view)."""
    batch, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch * height * width, n_edges, sources, channels // (n_edges * sources))


def _shared_pool(h: torch.Tensor, pool: nn.Module, bns: Sequence[nn.BatchNorm2d], sources: int = 1) -> torch.Tensor:
    """Pooling then non-affine BN, once for all edges; every edge's BN records the batch statistics
    (the unbiased variance recovered from the BN's own inverse standard deviation: no second pass)."""
    pooled = pool(h).contiguous(memory_format=CHANNELS_LAST)  # the layout of its gradient (see _rows)
    out, mean, invstd = torch.native_batch_norm(pooled, None, None, None, None, True, 0.0, bns[0].eps)
    with torch.no_grad():
        n = pooled.numel() // pooled.shape[1]
        var = (invstd.double().pow(-2) - bns[0].eps) * (n / max(n - 1, 1))
        var, mean = var.to(bns[0].running_var.dtype), mean.to(bns[0].running_mean.dtype)  # autocast: bf16 input
        momentum = bns[0].momentum
        # edge (j, s) reads source s's channels (edges in (j, s) order)
        means, variances = mean.chunk(sources), var.chunk(sources)
        torch._foreach_lerp_([b.running_mean for b in bns], [means[k % sources] for k in range(len(bns))], momentum)
        torch._foreach_lerp_([b.running_var for b in bns], [variances[k % sources] for k in range(len(bns))],
                             momentum)
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return out
