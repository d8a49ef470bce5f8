"""DARIO: differentiable, data-agnostic pruning of pre-trained ViTs (thesis 6.1, Algorithm 5).

Single-level search over gate parameters alpha (block, head or both granularities):

1. warm start: the best of ``k`` samples alpha ~ N(0, 1) under the proxy;
2. ``n`` iterations of: x = batch of ones; o = M(alpha, x); theta~ = theta - gamma * d(sum o)/d theta
   (Eq 6.6, kept differentiable in alpha: a double backward); s = S(theta~);
   alpha <- alpha - lambda * ds/dalpha. theta itself never changes (it is "reset" every step).

The reference implementation takes the alpha gradient from sum(output).backward(); dartboard follows
the thesis and differentiates the proxy of theta~ (Eq 6.4, 6.6).

Gate step size. s depends on alpha only through the gamma-step of Eq 6.6, so ds/dalpha is O(gamma) and
carries the proxy's scale (parameter variance scales with |theta|^2). Measured on the digits demo ViT
(gamma = 1e-3): s ~ 3.9e-3, |ds/dalpha| ~ 2e-8, so 500 thesis steps at lambda = 0.1 move alpha by ~1e-6:
the thesis form needs lambda ~ 1e5 on that model, and another lambda for every model, gamma and proxy.
``gate_gradient`` keeps the thesis form by default and offers two documented normalisations:
"log" descends log|s| (ds/dalpha / |s|: invariant to the proxy's scale, still O(gamma)) and "unit"
takes steps of length lambda along -ds/dalpha / ||ds/dalpha||_2 (normalised gradient descent: lambda
is then a distance in alpha space, independent of the proxy's and gamma's scales).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dartboard.searchers.dario.proxies import DEFAULT_PROXY, get_proxy
from dartboard.searchers.dario_options import (  # the thesis' defaults, as data (also this module's public names)
    GATE_GRADIENTS,
    ITERATIONS,
    MODEL_LR,
    SEARCH_LR,
    THRESHOLD,
    WARMUP_MEAN,
    WARMUP_SAMPLES,
)
from dartboard.searchers.graphed import on_side_stream
from dartboard.spaces.genotype import GateGenotype
from dartboard.spaces.vit import (
    GRANULARITIES,
    GatedViT,
    functional_forward,
    genotype_from_gates,
    infer_input_shape,
    unfused_attention,
)

log = logging.getLogger(__name__)

# THRESHOLD, WARMUP_SAMPLES, ITERATIONS, SEARCH_LR, MODEL_LR, WARMUP_MEAN, GATE_GRADIENTS: data in
# dartboard.searchers.dario_options (imported above), read without torch by the searcher registry and --help.
WARMUP_STD = 1.0
GRAPH_WARMUP = 2  # cuda_graph: eager iterations before the capture


@dataclass
class DarioConfig:
    granularity: str = "block"  # thesis 6.1.2 chooses block granularity
    proxy: str = DEFAULT_PROXY
    threshold: float = THRESHOLD
    warmup_samples: int = WARMUP_SAMPLES
    iterations: int = ITERATIONS
    search_lr: float = SEARCH_LR
    model_lr: float = MODEL_LR
    optimizer: str = "sgd"  # Algorithm 5 line 10 is plain gradient descent; "adam" is an option
    gate_gradient: str = "thesis"  # "thesis": ds/dalpha; "log": ds/dalpha / |s|; "unit": ds/dalpha / ||.||_2
    warmup_mean: float = WARMUP_MEAN  # warm start samples alpha ~ N(warmup_mean, warmup_std^2)
    warmup_std: float = WARMUP_STD
    batch_size: int = 1
    seed: int = 0
    input_shape: tuple[int, int, int] | None = None  # (C, H, W); inferred from the model when None
    cuda_graph: bool = False  # each iteration's double backward replayed from one CUDA graph (GPU)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        proxy = get_proxy(self.proxy)
        if not proxy.differentiable and self.iterations > 0:
            raise ValueError(f"proxy: {self.proxy!r} is piecewise constant (no gradient in the gates); use it "
                             "with iterations=0 (warm start only) or in the proxy study")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {self.threshold}")
        self._check_numbers()
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {self.optimizer!r}")
        if self.gate_gradient not in GATE_GRADIENTS:
            raise ValueError(f"gate_gradient: expected one of {', '.join(GATE_GRADIENTS)}, got {self.gate_gradient!r}")
        if not (math.isfinite(self.warmup_mean) and math.isfinite(self.warmup_std) and self.warmup_std > 0):
            raise ValueError(f"warmup_mean, warmup_std: expected finite values with warmup_std > 0, got "
                             f"{self.warmup_mean}, {self.warmup_std}")

    def _check_numbers(self) -> None:
        for name in ("warmup_samples", "iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size}")
        for name in ("search_lr", "model_lr"):  # NaN fails the comparison too
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")


def prior_mean_for_keep_probability(threshold: float, keep_probability: float = 0.5, std: float = WARMUP_STD) -> float:
    """The warm-start mean mu such that P(sigmoid(alpha) >= threshold) = keep_probability, alpha ~ N(mu, std^2).

    sigmoid(alpha) >= t  <=>  alpha >= logit(t), so mu = logit(t) + std * Phi^-1(keep_probability).
    With the thesis prior N(0, 1) and t = 0.65, each gate is kept with probability 1 - Phi(0.619) = 0.27.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1), got {threshold}")
    if not 0.0 < keep_probability < 1.0:
        raise ValueError(f"keep_probability: expected a value in (0, 1), got {keep_probability}")
    logit = math.log(threshold / (1.0 - threshold))
    return logit + std * float(torch.special.ndtri(torch.tensor(keep_probability, dtype=torch.float64)))


class DarioSearcher:
    """Algorithm 5 on a pre-trained timm ViT; :meth:`search` then :meth:`derive` a :class:`GateGenotype`."""

    def __init__(self, model: nn.Module, config: DarioConfig | None = None) -> None:
        self.config = config or DarioConfig()
        self.config.validate()
        self.gated = GatedViT(model).eval()
        self.proxy = get_proxy(self.config.proxy)
        ref = next(self.gated.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        if not isinstance(self.config.cuda_graph, bool):
            raise ValueError(f"cuda_graph: expected true or false, got {self.config.cuda_graph!r}")
        if self.config.cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph: CUDA graphs need a CUDA device, the model is on {self.device}")
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_calls = 0
        self._static: tuple[Tensor, tuple[Tensor, ...]] | None = None
        self.names = [n for n, p in self.gated.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.gated.named_parameters() if p.requires_grad]
        shape = self.config.input_shape or infer_input_shape(model)
        self.x = torch.ones(self.config.batch_size, *shape, device=self.device, dtype=self.dtype)  # Alg 5 line 5
        g = self.config.granularity
        nb, nh = self.gated.n_blocks, self.gated.n_heads
        self.alpha: dict[str, Tensor] = {}
        if g in ("block", "both"):
            self.alpha["block"] = torch.zeros(nb, device=self.device, dtype=self.dtype, requires_grad=True)
        if g in ("head", "both"):
            self.alpha["head"] = torch.zeros(nb, nh, device=self.device, dtype=self.dtype, requires_grad=True)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.history: list[float] = []
        self.warm_start_value: float | None = None
        alphas = list(self.alpha.values())
        lr = self.config.search_lr
        self.optimizer = torch.optim.Adam(alphas, lr=lr) if self.config.optimizer == "adam" else \
            torch.optim.SGD(alphas, lr=lr)

    # ------------------------------------------------------------------ the proxy of theta~(alpha)

    def gates(self, alpha: dict[str, Tensor] | None = None) -> tuple[Tensor | None, Tensor | None]:
        alpha = self.alpha if alpha is None else alpha
        block = torch.sigmoid(alpha["block"]) if "block" in alpha else None  # Eq 6.3
        head = torch.sigmoid(alpha["head"]) if "head" in alpha else None
        return block, head

    def proxy_value(self, alpha: dict[str, Tensor] | None = None, create_graph: bool = True) -> Tensor:
        """s = S(theta~(alpha)), theta~ = theta - gamma d(sum M(alpha, ones))/d theta (Eq 6.6)."""
        block, head = self.gates(alpha)
        out = self.gated(self.x, block, head)  # Alg 5 line 6
        grads = torch.autograd.grad(out.sum(), self.params, create_graph=create_graph, allow_unused=True)
        gamma = self.config.model_lr
        theta = {n: p if g is None else p - gamma * g  # Alg 5 line 8
                 for n, p, g in zip(self.names, self.params, grads, strict=True)}
        if not create_graph:
            theta = {n: t.detach() for n, t in theta.items()}

        def forward(params: dict[str, Tensor]) -> Tensor:
            return functional_forward(self.gated, params, self.x, block, head)

        return self.proxy(theta, forward if self.proxy.needs_forward else None)  # Alg 5 line 9

    def alpha_gradient(self) -> dict[str, Tensor]:
        """ds/dalpha for the current alpha (one double backward), raw: the thesis form."""
        s, grads = self._graphed_gradient() if self.config.cuda_graph else self._gradient()
        self.history.append(float(s))
        return dict(zip(self.alpha, grads, strict=True))

    def _gradient(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        with unfused_attention(self.gated):
            s = self.proxy_value(create_graph=True)
            grads = torch.autograd.grad(s, list(self.alpha.values()))
        return s.detach(), tuple(grads)

    def _graphed_gradient(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        """:meth:`_gradient` replayed from one CUDA graph: its thousands of small kernels (a ViT's forward,
        backward and double backward at batch 1) in one launch. The graph reads the alphas, the ones
        input and the weights in place (the optimizer updates the alphas in place; theta never changes).
        The first calls run eagerly on a side stream (cuBLAS handles, autograd's buffers), then one capture."""
        if self._graph_calls < GRAPH_WARMUP:
            self._graph_calls += 1
            return on_side_stream(self.device, self._gradient)
        if self._graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static = self._gradient()
            self._graph = graph
        self._graph.replay()
        s, grads = self._static
        return s.clone(), tuple(g.clone() for g in grads)  # the next replay rewrites the graph's outputs

    def search_direction(self, grads: dict[str, Tensor], value: float) -> dict[str, Tensor]:
        """The gradient the optimiser steps along, per ``gate_gradient`` (module docstring)."""
        mode = self.config.gate_gradient
        if mode == "log":  # d log|s| / d alpha = (ds/dalpha) / |s|
            return {k: g / max(abs(value), torch.finfo(g.dtype).tiny) for k, g in grads.items()}
        if mode == "unit":  # one L2 norm over all gate groups, so their relative sizes are kept
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
            if float(norm) == 0.0:
                return grads
            return {k: g / norm.to(g.dtype) for k, g in grads.items()}
        return grads

    # ------------------------------------------------------------------ Algorithm 5

    def warm_start(self) -> float:
        """Keep the best of k samples alpha ~ N(warmup_mean, warmup_std^2) (Algorithm 5 lines 1-3; thesis N(0, 1))."""
        best, best_alpha = math.inf, None
        with unfused_attention(self.gated):
            for _ in range(self.config.warmup_samples):
                sample = {k: (self.config.warmup_mean + self.config.warmup_std
                              * torch.randn(v.shape, generator=self.generator)).to(v) for k, v in self.alpha.items()}
                value = float(self.proxy_value(sample, create_graph=False).detach())
                if value < best:
                    best, best_alpha = value, sample
        if best_alpha is not None:
            with torch.no_grad():
                for k, v in self.alpha.items():
                    v.copy_(best_alpha[k])
            self.warm_start_value = best
        return best

    def step(self) -> float:
        """One iteration of Algorithm 5 (lines 5-10); returns the proxy value before the step."""
        grads = self.search_direction(self.alpha_gradient(), self.history[-1])
        self.optimizer.zero_grad(set_to_none=True)
        for k, v in self.alpha.items():
            v.grad = grads[k]
        self.optimizer.step()  # Alg 5 line 10: alpha <- alpha - lambda ds/dalpha
        return self.history[-1]

    def search(self) -> dict[str, Tensor]:
        self.warm_start()
        for i in range(self.config.iterations):
            value = self.step()
            if i % max(1, self.config.iterations // 10) == 0:
                log.debug("dario iteration %d proxy %.6g", i, value)
        return {k: v.detach().clone() for k, v in self.alpha.items()}

    def final_value(self) -> float:
        with unfused_attention(self.gated):
            return float(self.proxy_value(create_graph=False).detach())

    def derive(self, model_name: str, meta: dict[str, Any] | None = None) -> GateGenotype:
        """Threshold sigmoid(alpha): modules under ``threshold`` are pruned (thesis 6.1.2)."""
        block, head = (None if g is None else g.detach().cpu() for g in self.gates())
        info = {"granularity": self.config.granularity, "proxy": self.config.proxy,
                "threshold": self.config.threshold,
                "config": {k: v for k, v in asdict(self.config).items() if k != "extra"}}
        if block is not None:
            info["block_gates"] = [round(float(v), 6) for v in block]
        if head is not None:
            info["head_gates"] = [[round(float(v), 6) for v in row] for row in head]
        info.update(meta or {})
        return genotype_from_gates(model_name, self.gated.n_blocks, self.gated.n_heads, block, head,
                                   self.config.threshold, info)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a resumed search needs: alphas, their optimizer, the warm start's generator, the history."""
        return {"alpha": {k: v.detach().clone() for k, v in self.alpha.items()},
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "history": list(self.history), "warm_start_value": self.warm_start_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in self.alpha.items():
                v.copy_(state["alpha"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.history, self.warm_start_value = list(state["history"]), state["warm_start_value"]

    def metrics(self) -> dict[str, float]:
        out = {"proxy_final": self.history[-1] if self.history else math.nan}
        if self.warm_start_value is not None:
            out["proxy_warm_start"] = self.warm_start_value
        return out
