"""DARTS-PT (Wang et al. 2021): perturbation-based architecture selection after supernet training.

An activation (softmax mixing) that, from ``start_epoch`` on (default: half of the epochs; the
first half trains the supernet as DARTS does), projects the supernet one decision at a time:

1. operation: for each edge in random order, the op whose removal (its weight set to 0) lowers
   the supernet's validation accuracy most is kept, the edge's weights become its one-hot;
2. topology: for each node with more than 2 inputs, the 2 incoming edges whose removal lowers the
   accuracy most are kept, the others are removed (weights 0).

Between decisions the supernet is fine-tuned for ``tune_steps`` weight steps (the search's own
steps continue; the alphas are frozen: no gradient reaches them once projection starts). The
decisions fit in the search's epochs: where the steps left (counted from the steps per epoch seen
so far) cannot hold every pending decision with ``tune_steps`` between them, fewer steps are put
between them, down to several decisions in one step; a decision still pending when the last epoch
closes (a projection that starts in the first epoch, before its length is known) is made then. So
the derived genotype is always the whole projection, never a half-projected supernet's parse.
Accuracy is measured on the last ``val_batches`` validation batches the search saw, ties broken
by the larger loss. Decisions are read on the host (``.item()``-like reads, once per decision).
The derivation reads the projected weights (unprojected edges: softmax(alpha)).
"""

from __future__ import annotations

from typing import Any

import torch

from dartboard.searchers.parts.activations import ACTIVATIONS
from dartboard.searchers.parts.samplers import _GroupSampler, step_generator

# DARTS-PT fine-tunes the supernet between decisions (reference code: a few epochs per decision,
# `proj_intv`); counted here in weight steps so that tiny searches project too (dartboard's choice).
PT_TUNE_STEPS = 10
PT_VAL_BATCHES = 4  # validation batches per criterion evaluation (dartboard's choice; the paper: the val set)
PT_STREAM = 1 << 22


def removal_choice(scores: list[tuple[float, float]], candidates: list[int], keep: int = 1) -> list[int]:
    """The ``keep`` candidates whose removal hurts most: lowest accuracy after removal, then highest loss.
    ``scores[i] = (accuracy, loss)`` of the supernet without candidate ``candidates[i]``."""
    order = sorted(range(len(candidates)), key=lambda i: (scores[i][0], -scores[i][1], i))
    return [candidates[i] for i in order[:keep]]


@ACTIVATIONS.register("darts_pt")
class PerturbationProjection(_GroupSampler):
    stream_offset = PT_STREAM

    def __init__(self, start_epoch: int | None = None, tune_steps: int = PT_TUNE_STEPS,
                 val_batches: int = PT_VAL_BATCHES, seed: int | None = None):
        if int(tune_steps) < 0 or int(val_batches) < 1:
            raise ValueError(f"tune_steps, val_batches: expected >= 0 and >= 1, got {tune_steps}, {val_batches}")
        super().__init__(seed)
        self.start_epoch, self.tune_steps, self.val_batches = start_epoch, int(tune_steps), int(val_batches)
        self.decided: dict[tuple[int, int], int] = {}  # (group, edge) -> kept op
        self.removed: set[tuple[int, int]] = set()  # (group, edge) removed by the topology decisions
        self.queue: list[list] | None = None  # pending decisions ["op", group, edge] / ["edge", group, node]
        self.since = 0
        self.buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.epoch_seen: int | None = None
        self.per_epoch: int | None = None  # search steps per epoch, known from the second epoch on

    def start(self, ctx: Any) -> None:
        super().start(ctx)
        if self.start_epoch is not None and not 0 <= int(self.start_epoch) < ctx.epochs:
            raise ValueError(f"start_epoch (pt_start_epoch): the projection would start at epoch {self.start_epoch} "
                             f"of a search of {ctx.epochs} epochs (0 to {ctx.epochs - 1}): it would never run, and the "
                             f"genotype would be plain DARTS's; give a start_epoch below epochs")
        ctx.skip_zero_weight_ops()  # projected-out ops cost nothing

    @property
    def projecting(self) -> bool:
        return self.queue is not None

    # ------------------------------------------------------------------ the mixing weights
    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(alpha.detach() if self.projecting else alpha, dim=-1)
        return self._project(self.group_of(alpha), w, one=None)

    def derive_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(alpha, dim=-1)
        return self._project(self.group_of(alpha), w, one=w)  # decided edges keep their op's strength

    def _project(self, group: int, w: torch.Tensor, one: torch.Tensor | None) -> torch.Tensor:
        rows = [(e, k) for (g, e), k in self.decided.items() if g == group]
        gone = [e for g, e in self.removed if g == group]
        if not rows and not gone:
            return w
        w = w.clone()
        for e, k in rows:
            value = 1.0 if one is None else float(one[e, k])
            w[e] = 0.0
            w[e, k] = value
        for e in gone:
            w[e] = 0.0
        return w

    # ------------------------------------------------------------------ the decisions
    def resample(self, ctx: Any) -> None:
        self.step = ctx.global_step
        if ctx.last_val_batch is not None:
            self.buffer = (self.buffer + [tuple(ctx.last_val_batch)])[-self.val_batches:]
        if ctx.epoch != self.epoch_seen:  # an epoch's first step: every epoch before it took as many steps
            self.epoch_seen = ctx.epoch
            self.per_epoch = ctx.global_step // ctx.epoch if ctx.epoch else None
        start = ctx.epochs // 2 if self.start_epoch is None else int(self.start_epoch)
        if ctx.epoch < start:
            return
        if self.queue is None:
            self.queue = self.plan(ctx)
            self.since = self.tune_steps
        due = self.due(ctx)
        for _ in range(due):
            self.decide(ctx, self.queue.pop(0))
        self.since = 0 if due else self.since + 1

    def due(self, ctx: Any) -> int:
        """Decisions to make at this step: one after ``tune_steps`` fine-tuning steps, fewer steps between them
        where the steps left would not hold every pending decision, several at once where fewer steps than
        decisions are left."""
        pending = len(self.queue or [])
        if not pending:
            return 0
        gap = self.tune_steps
        if self.per_epoch:
            left = self.per_epoch * ctx.epochs - ctx.global_step  # this step included
            if left < pending:
                return -(-pending // max(left, 1))
            gap = min(gap, left // pending - 1)
        return 1 if self.since >= gap else 0

    def end_epoch(self, ctx: Any) -> None:
        """At the last epoch's close, the decisions still pending are made (without fine-tuning between them)."""
        while self.queue and ctx.epoch + 1 >= ctx.epochs:
            self.decide(ctx, self.queue.pop(0))

    def plan(self, ctx: Any) -> list[list]:
        """Every edge in random order, then every node with more than 2 inputs in random order."""
        gen = step_generator("cpu", self.base_seed, 0, PT_STREAM)
        edges = [["op", g, e] for g, group in enumerate(ctx.groups) for e in range(len(group.rows))]
        nodes = [["edge", g, n] for g, group in enumerate(ctx.groups) for n in sorted({d for _, d in group.rows})
                 if sum(1 for _, d in group.rows if d == n) > 2]
        return ([edges[i] for i in torch.randperm(len(edges), generator=gen).tolist()]
                + [nodes[i] for i in torch.randperm(len(nodes), generator=gen).tolist()])

    @torch.no_grad()
    def score(self, ctx: Any, group_weights: list[torch.Tensor]) -> tuple[float, float]:
        """(accuracy, loss) of the supernet with ``group_weights`` on the buffered validation batches."""
        correct, loss, n = 0.0, 0.0, 0
        with ctx.frozen_batchnorm():
            for x, y in self.buffer:
                x, y = x.to(ctx.device), y.to(ctx.device)
                out = ctx.forward(x, group_weights)
                correct += float((out.argmax(dim=1) == y).sum())
                loss += float(ctx.loss(out, y)) * y.numel()
                n += y.numel()
        return correct / max(n, 1), loss / max(n, 1)

    def _without(self, ctx: Any, group: int, row: int, op: int | None) -> tuple[float, float]:
        w = [self.weights(a).detach().clone() for a in ctx.alphas]
        if op is None:
            w[group][row] = 0.0
        else:
            w[group][row, op] = 0.0
        return self.score(ctx, w)

    @staticmethod
    def _mean_over_ranks(ctx: Any, scores: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Every rank scores on its own validation shard: the criterion is their mean (one decision)."""
        t = torch.tensor(scores, dtype=torch.float64, device=ctx.device)
        ctx.reduce_mean([t])
        return [(float(a), float(b)) for a, b in t.tolist()]

    def decide(self, ctx: Any, decision: list) -> None:
        kind, g, i = decision[0], int(decision[1]), int(decision[2])
        group = ctx.groups[g]
        if kind == "op":
            candidates = [k for k, name in enumerate(group.primitives[i]) if name != "none"]
            scores = self._mean_over_ranks(ctx, [self._without(ctx, g, i, k) for k in candidates])
            self.decided[(g, i)] = removal_choice(scores, candidates)[0]
            return
        incoming = [e for e, (_, d) in enumerate(group.rows) if d == i and (g, e) not in self.removed]
        scores = self._mean_over_ranks(ctx, [self._without(ctx, g, e, None) for e in incoming])
        kept = set(removal_choice(scores, incoming, keep=2))
        self.removed.update((g, e) for e in incoming if e not in kept)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decided": [[g, e, k] for (g, e), k in sorted(self.decided.items())],
                "removed": sorted([g, e] for g, e in self.removed), "queue": self.queue, "since": self.since,
                "buffer": [list(b) for b in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.decided = {(int(g), int(e)): int(k) for g, e, k in state["decided"]}
        self.removed = {(int(g), int(e)) for g, e in state["removed"]}
        self.queue = None if state["queue"] is None else [list(d) for d in state["queue"]]
        self.since = int(state["since"])
        self.buffer = [tuple(b) for b in state["buffer"]]

    def metrics(self, ctx: Any) -> dict[str, float]:
        """``pt_pending``: the decisions still to make, all of them (the plan's length) before the projection starts."""
        pending = self.queue if self.queue is not None else self.plan(ctx)
        return {"pt_decided_edges": float(len(self.decided)), "pt_removed_edges": float(len(self.removed)),
                "pt_pending": float(len(pending))}
