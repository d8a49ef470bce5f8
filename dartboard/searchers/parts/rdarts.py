"""R-DARTS (Zela et al. 2020; the Zela & Hutter note; ALGORITHMS.md R-DARTS).

- :func:`dominant_eigenvalue`: the largest eigenvalue of the Hessian of L_val w.r.t. the
  alphas on a validation minibatch, by Hessian-vector products (double backward) and power
  iteration, never forming the Hessian (the reference builds it in full).
- :func:`local_average` and :func:`es_stop_index`: the DARTS-ES rule on the sequence of eigenvalues.
- :class:`RDartsHook`: an epoch hook (``hooks: [{name: rdarts, mode: ...}]``) that computes
  the eigenvalue after epoch 1 and then every ``every`` epochs, keeps checkpoints, and on the ES
  signal either stops and restores the architecture the rule returns (DARTS-ES) or rolls back to
  that checkpoint, multiplies the weight decay by 10 (capped at 0.03) and continues (DARTS-ADA).

The DARTS-ES rule (Zela et al. 2020, DARTS-ES; the RobustDARTS code, ``EVLocalAvg``; ALGORITHMS.md
R-DARTS). The local average of the dominant eigenvalue over a window of ``window`` = 5 evaluations
belongs to the window's centre: with the window ending at the latest evaluation t it is the average of
evaluations t-4..t, attributed to evaluation c = t - 2. The rule compares it with the local average
``lag`` = 4 evaluations earlier (centre c - 4) and fires when their ratio exceeds 1.3; it may only fire
once the architecture it would return, that of evaluation c - 4, is at least the start epoch 10; it
returns that architecture (DARTS-ADA rolls back to that checkpoint). With the reference's schedule (an
eigenvalue after epoch 1 and then every 2 epochs) that is current epoch - 4 (centre) - 8 = current - 12;
with one evaluation every epoch it is current - 6. Epochs: the reference counts from 0 and evaluates
at its epochs 0, 2, 4, ...; dartboard's epoch is the number of finished epochs, so the reference's epoch
e is dartboard's e + 1: evaluations after epochs 1, 3, 5, ..., and "start epoch 10" (0-based) means
the returned architecture is from dartboard epoch >= 11. Two deliberate differences from the code:
the rule is also checked at the last epoch (the reference skips it there, where its bookkeeping
switches to a shrinking window), and after a DARTS-ADA rollback the curvature history restarts
(the reference reloads the history saved with the checkpoint, which needs every older checkpoint).

The S1-S4 spaces (with S4's `noise` op) are in the catalog (``--space s1..s4``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dartboard.searchers.base import Batch, to_device
from dartboard.searchers.parts.base import Part
from dartboard.searchers.parts.hooks import HOOKS

# R-DARTS (Zela et al. 2020; RobustDARTS scripts and EVLocalAvg; ALGORITHMS.md R-DARTS): an eigenvalue
# after the first epoch and then every 2 epochs; local average over a window of 5 evaluations, attributed
# to its centre; stop when avg[c] / avg[c - 4] > 1.3, once the returned evaluation c - 4 is at
# epoch >= 10 (0-based, as in the reference); return the architecture of evaluation c - 4.
EIG_EVERY = 2
ES_WINDOW = 5
ES_LAG = 4
ES_RATIO = 1.3
ES_START_EPOCH = 10
ADA_WD_FACTOR = 10.0  # R-DARTS DARTS-ADA: multiply the L2 factor by 10 ...
ADA_WD_MAX = 0.03  # ... capped at 0.03 (ALGORITHMS.md R-DARTS)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _normalize(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(_dot(v, v)).clamp_min(1e-30)
    return [x / norm for x in v]


def dominant_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], max_iter: int = 300,
                        tol: float = 1e-7, seed: int = 0) -> float:
    """Largest (algebraic) eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Power iteration v <- Hv / ||Hv|| with H v from one double backward, Rayleigh quotient
    lambda = v^T H v, until its relative change is < ``tol``. Power iteration finds the
    eigenvalue of largest magnitude; if that one is negative, a second run on H - lambda I
    (whose spectrum is >= 0) gives the largest algebraic eigenvalue, as eigvalsh(H)[-1].

    Parameters the loss does not use (e.g. normal-cell alphas of a supernet made of reduction cells
    only), or uses linearly, have zero rows and columns in H: the iteration runs on the others and
    the zero eigenvalues they add count in the maximum."""
    params = list(params)
    first = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    curved = [(p, g) for p, g in zip(params, first, strict=True) if g is not None and g.requires_grad]
    if not curved:
        return 0.0
    has_zero_block = len(curved) < len(params)
    params, grads = [p for p, _ in curved], [g for _, g in curved]

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, out, strict=True)]

    gen = torch.Generator().manual_seed(seed)
    start = _normalize([torch.randn(p.shape, generator=gen).to(p) for p in params])

    def power(shift: float) -> float:
        v, value = start, None
        for _ in range(max_iter):
            hv = [h - shift * x for h, x in zip(hvp(v), v, strict=True)]
            new = float(_dot(v, hv))
            v = _normalize(hv)
            if value is not None and abs(new - value) <= tol * max(abs(new), 1e-12):
                value = new
                break
            value = new
        return value + shift

    largest_magnitude = power(0.0)
    value = largest_magnitude if largest_magnitude >= 0 else power(largest_magnitude)
    return max(value, 0.0) if has_zero_block else value


def val_hessian_eigenvalue(ctx: Any, batch: Batch, **options: Any) -> float:
    """Dominant eigenvalue of the Hessian of L_val(w, alpha) w.r.t. the alphas on ``batch``,
    with the search's activation; BN running statistics are left untouched."""
    x, y = to_device(batch, ctx.device)
    with ctx.preserved_buffers():
        return dominant_eigenvalue(lambda: ctx.loss(ctx.forward(x, ctx.group_weights()), y), ctx.alphas, **options)


class AdaptiveWeightDecay:
    """The inner L2 (weight-decay) factor of L_train, which DARTS-ADA raises (R-DARTS):
    wd <- min(wd * factor, max_wd), set on the weight optimizer (the unrolled step reads it there)."""

    def __init__(self, factor: float = ADA_WD_FACTOR, max_wd: float = ADA_WD_MAX):
        self.factor, self.max_wd = float(factor), float(max_wd)

    @staticmethod
    def current(optimizer: torch.optim.Optimizer) -> float:
        return float(optimizer.param_groups[0]["weight_decay"])

    @staticmethod
    def set(optimizer: torch.optim.Optimizer, value: float) -> None:
        for group in optimizer.param_groups:
            group["weight_decay"] = value

    def increase(self, optimizer: torch.optim.Optimizer, base: float) -> float:
        value = min(base * self.factor, self.max_wd)
        self.set(optimizer, value)
        return value


def local_average(values: Sequence[float], centre: int, window: int = ES_WINDOW) -> float:
    """The local average that belongs to evaluation ``centre``: the mean of the ``window`` evaluations
    ``centre - window//2 ..`` (``centre - 2 .. centre + 2`` for 5), truncated at the start as in the
    reference (centre 0: evaluations 0..2)."""
    last = centre + window // 2
    chunk = values[max(0, last - window + 1): last + 1]
    return sum(chunk) / len(chunk)


def es_returned_index(eigenvalues: Sequence[float], epochs: Sequence[int], window: int = ES_WINDOW,
                      lag: int = ES_LAG, ratio: float = ES_RATIO, start_epoch: int = ES_START_EPOCH) -> int | None:
    """DARTS-ES at the latest evaluation t: with c = t - window//2 the centre of the latest window, the
    index c - lag of the evaluation whose architecture is returned if avg[c] / avg[c - lag] > ratio and
    that evaluation's epoch is >= ``start_epoch`` counted from 0 (``epochs`` counts finished epochs);
    None if the rule does not fire."""
    centre = len(eigenvalues) - 1 - window // 2
    back = centre - lag
    if back < 0 or epochs[back] - 1 < start_epoch:
        return None
    before = local_average(eigenvalues, back, window)
    return back if before > 0 and local_average(eigenvalues, centre, window) / before > ratio else None


def es_stop_index(eigenvalues: Sequence[float], epochs: Sequence[int], window: int = ES_WINDOW, lag: int = ES_LAG,
                  ratio: float = ES_RATIO, start_epoch: int = ES_START_EPOCH) -> tuple[int, int] | None:
    """DARTS-ES over a whole sequence: (the first evaluation at which the rule fires, the evaluation
    whose architecture it returns), or None."""
    for t in range(len(eigenvalues)):
        back = es_returned_index(eigenvalues[: t + 1], epochs[: t + 1], window, lag, ratio, start_epoch)
        if back is not None:
            return t, back
    return None


@HOOKS.register("rdarts")
class RDartsHook(Part):
    """Epoch hook: eigenvalue after epoch 1 and then every ``every`` epochs; ``mode`` = "monitor" (log
    only), "es" (DARTS-ES) or "ada" (DARTS-ADA). ADA already at the weight-decay cap stops like ES."""

    def __init__(self, mode: str = "es", every: int = EIG_EVERY, window: int = ES_WINDOW, lag: int = ES_LAG,
                 ratio: float = ES_RATIO, start_epoch: int = ES_START_EPOCH, wd_factor: float = ADA_WD_FACTOR,
                 wd_max: float = ADA_WD_MAX, max_iter: int = 100, tol: float = 1e-5):
        if mode not in ("monitor", "es", "ada"):
            raise ValueError(f"mode: expected 'monitor', 'es' or 'ada', got {mode!r}")
        for name, value in (("every", every), ("window", window), ("lag", lag)):
            if int(value) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value}")
        self.mode, self.every, self.window, self.lag = mode, int(every), int(window), int(lag)
        self.ratio, self.start_epoch = float(ratio), int(start_epoch)
        self.weight_decay = AdaptiveWeightDecay(wd_factor, wd_max)
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.eigenvalues: list[float] = []
        self.epochs: list[int] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.rollbacks = 0
        self.stopped_at: int | None = None
        self.returned_epoch: int | None = None
        # For tests and custom curvature measures: (ctx, batch) -> eigenvalue.
        self.eigenvalue_fn: Callable[[Any, Batch], float] = lambda s, b: val_hessian_eigenvalue(
            s, b, max_iter=self.max_iter, tol=self.tol)

    def end_epoch(self, ctx: Any) -> dict[str, float]:
        optimizer = ctx.weight_optimizer
        metrics = {"w_weight_decay": AdaptiveWeightDecay.current(optimizer), "rdarts_rollbacks": float(self.rollbacks)}
        if (ctx.epoch - 1) % self.every or ctx.last_val_batch is None:  # epochs 1, 1 + every, ...
            return metrics
        value = float(self.eigenvalue_fn(ctx, ctx.last_val_batch))
        self.eigenvalues.append(value)
        self.epochs.append(ctx.epoch)
        self.checkpoints.append(ctx.snapshot())  # already a deep copy
        # The rule returns evaluation t - window//2 - lag: keep the checkpoints from there on.
        self.checkpoints = self.checkpoints[-(self.window // 2 + self.lag + 1):]
        metrics["hessian_eigenvalue"] = value
        back = es_returned_index(self.eigenvalues, self.epochs, self.window, self.lag, self.ratio, self.start_epoch)
        if self.mode == "monitor" or back is None:
            return metrics
        stop_epoch = ctx.epoch
        checkpoint = self.checkpoints[back - len(self.eigenvalues)]  # evaluation `back`
        self.returned_epoch = checkpoint["counters"]["epoch"]
        wd_before = AdaptiveWeightDecay.current(optimizer)
        ctx.restore(copy.deepcopy(checkpoint))
        if self.mode == "es" or wd_before >= self.weight_decay.max_wd * (1 - 1e-9):
            self.weight_decay.set(optimizer, wd_before)
            self.stopped_at = stop_epoch
            ctx.request_stop()
            metrics["rdarts_stopped_at"] = float(stop_epoch)
        else:
            self.weight_decay.increase(optimizer, base=wd_before)
            self.rollbacks += 1
            # The curvature history restarts from the restored checkpoint.
            self.eigenvalues, self.epochs, self.checkpoints = [], [], []
        metrics["rdarts_returned_epoch"] = float(self.returned_epoch)
        metrics["w_weight_decay"] = AdaptiveWeightDecay.current(optimizer)
        metrics["rdarts_rollbacks"] = float(self.rollbacks)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"eigenvalues": list(self.eigenvalues), "epochs": list(self.epochs), "checkpoints": self.checkpoints,
                "rollbacks": self.rollbacks, "stopped_at": self.stopped_at, "returned_epoch": self.returned_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eigenvalues, self.epochs = list(state["eigenvalues"]), list(state["epochs"])
        self.checkpoints = list(state["checkpoints"])
        self.rollbacks, self.stopped_at = state["rollbacks"], state["stopped_at"]
        self.returned_epoch = state["returned_epoch"]

