"""The scalar hyperparameters of a search (the supernet, the weight step, the alpha step's
base learning rate) and the parts it is composed of. Defaults are the published DARTS ones
(ALGORITHMS.md, DARTS; Liu et al. 2019, CIFAR-10 search); a preset overrides them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from dartboard.spaces.limits import MAX_CELLS, MAX_CHANNELS, MAX_NODES_PER_CELL

PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("reference", "batched")  # dartboard.spaces.batched.ENGINES (the core of config imports no torch)
W_OPTIMIZERS = ("sgd", "adam")  # the weight step's optimizer; adam for regression objectives (PMSM criterion C)


@dataclass
class EngineConfig:
    space: str = "darts"
    start: str | None = None  # a handcrafted start (DARTOpti): the supernet takes its cells, types, reductions
    C: int = 16  # DARTS search: 16 initial channels
    layers: int | None = None  # DARTS search: 8 cells; None: 8, or the start's number of cells
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    epochs: int = 50  # DARTS: 50 search epochs
    warmup_epochs: int = 0  # epochs training weights only (DARTOpti: 5)
    order: int = 1  # hypergradient: 1 = first order, 2 = unrolled second order (thesis Eq 2.8)
    w_optimizer: str = "sgd"  # DARTS: SGD with momentum; "adam" (betas 0.9, 0.999; first order only)
    single_level: bool = False  # SNAS (Xie et al. 2019): the alpha step on the training batch, as the weight step
    w_lr: float = 0.025  # DARTS: SGD lr 0.025, cosine to 0.001
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4  # DARTS: Adam lr 3e-4, betas (0.5, 0.999), wd 1e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    unrolled_r: float = 0.01  # DARTS: R = 0.01 / ||grad_w' L_val||
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    node_bn: bool = False  # Maile et al.: non-affine BN after every node's sum (with CRB)
    reductions: tuple[int, ...] | None = None  # reduction cell positions; None: layers//3, 2*layers//3
    projector_layers: int = 6  # MLP-head spaces (NASiam, thesis 5.1.1): projector up to 6 layers ...
    predictor_layers: int = 4  # ... predictor up to 4 (0: none, SimCLR and MoCo)
    space_options: dict | None = None  # options of the space, checked by it (ColorNAS: colour_model, ...)
    engine: str = "batched"  # supernet forward: batched (dartboard.spaces.batched) or reference (per edge, per op)
    cuda_graph: bool = False  # each search step replayed from one CUDA graph (GPU; dartboard.searchers.graphed)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.order not in (1, 2) or isinstance(self.order, bool):
            raise ValueError(f"order: expected 1 or 2, got {self.order!r}")
        if self.w_optimizer not in W_OPTIMIZERS:
            raise ValueError(f"w_optimizer: expected sgd or adam, got {self.w_optimizer!r}")
        if self.w_optimizer != "sgd" and self.order == 2:
            raise ValueError("order: 2 unrolls an SGD weight step (thesis Eq 2.8); "
                             "w_optimizer adam is first order only")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {self.engine!r}")
        self._check_switches()
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")
        self.arch_betas = self._betas(self.arch_betas)
        if self.reductions is not None:
            self.reductions = self._positions(self.reductions)
        if self.space_options is not None and not isinstance(self.space_options, dict):
            raise ValueError(f"space_options: expected a mapping of the space's options, got {self.space_options!r}")
        self._resolve_layers()
        self._check_numbers()
        self._check_weight_step()

    def _check_switches(self) -> None:
        for name in ("cuda_graph", "single_level", "node_bn"):  # a string such as "no" would be true
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if type(self.device).__name__ == "device":  # a torch.device (this module imports no torch)
            self.device = str(self.device)
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device: expected cpu, cuda, cuda:N or mps, got {self.device!r}")

    @staticmethod
    def _betas(value: object) -> tuple[float, float]:
        """Adam's (beta1, beta2) of the alpha step: two numbers in [0, 1)."""
        pair = _as_tuple(value)
        if len(pair) != 2 or not all(is_number(b) and 0.0 <= b < 1.0 for b in pair):
            raise ValueError(f"arch_betas: expected two numbers in [0, 1) such as [0.5, 0.999], got {value!r}")
        return float(pair[0]), float(pair[1])

    @staticmethod
    def _positions(value: object) -> tuple[int, ...]:
        positions = _as_tuple(value)
        if not positions and value or not all(is_int(r) for r in positions):
            raise ValueError(f"reductions: expected a list of cell positions (integers), got {value!r}")
        return tuple(int(r) for r in positions)

    def _resolve_layers(self) -> None:
        if self.start is not None:
            from dartboard.spaces.supernet import start_genotype

            cells = len(start_genotype(self.start).cells)
            if self.layers is not None and self.layers != cells:
                raise ValueError(f"layers: the start {self.start!r} has {cells} cells, got layers={self.layers}")
            if self.reductions is not None:
                raise ValueError("reductions: a search from a start takes the start's reductions")
            self.layers = cells
        elif self.layers is None:
            self.layers = 8

    def _check_numbers(self) -> None:
        # the sizes a final network may have (spaces.limits): far beyond them a typo builds for minutes, or asks the
        # allocator for 120 GB (C=100000) and fails with its traceback
        tops = {"C": MAX_CHANNELS, "layers": MAX_CELLS, "steps": MAX_NODES_PER_CELL}
        for name in ("C", "layers", "steps", "epochs", "multiplier", "stem_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
            if value > tops.get(name, math.inf):
                raise ValueError(f"{name}: expected an integer <= {tops[name]} (the largest network dartboard builds), "
                                 f"got {value!r}")
        for name in ("warmup_epochs", "projector_layers", "predictor_layers"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        for name in ("w_lr", "grad_clip", "unrolled_r"):
            value = getattr(self, name)
            if not is_number(value) or value <= 0:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")
        for name in ("arch_lr", "w_lr_min", "w_momentum", "w_weight_decay", "arch_weight_decay"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")

    def _check_weight_step(self) -> None:
        """A momentum of 1 or more keeps every gradient forever: the weight step diverges. (A w_lr below w_lr_min is
        left alone: the cosine schedule then rises to w_lr_min, as the reference code's does, and studies sweep w_lr
        across w_lr_min.)"""
        if self.w_momentum >= 1:
            raise ValueError(f"w_momentum: expected a number in [0, 1), got {self.w_momentum!r}")


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool: True is 1 to Python, never a learning rate to a user)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _as_tuple(value: object) -> tuple:
    """A list or tuple as a tuple; anything else (a number, a string) as ``()``, which the callers refuse."""
    return tuple(value) if isinstance(value, (list, tuple)) else ()
