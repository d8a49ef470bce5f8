"""Running DARIO: pruning, throughput, the proxy study, MLflow logging.

The search itself (thesis Algorithm 5) lives in :mod:`dartboard.searchers.dario` and fine-tuning in
:mod:`dartboard.training.vit_finetune`; this module prepares models and data around them and measures
the result (thesis 6.1.2: accuracy before and
after pruning with the last block and the head fine-tuned; training and inference throughput of
the original and the pruned model, measured in the same run).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dartboard.searchers.base import seed_everything
from dartboard.searchers.dario import MODEL_LR, DarioConfig, DarioSearcher
from dartboard.searchers.dario.proxies import PROXIES
from dartboard.spaces.genotype import GateGenotype, save
from dartboard.spaces.vit import count_parameters, functional_forward, infer_input_shape
from dartboard.training.vit_finetune import evaluate, finetune_last_block, finetune_parameters

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- throughput


def measure_throughput(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, train: bool = False,
                       steps: int = 10, warmup: int = 3, device: str | torch.device = "cpu",
                       amp_dtype: torch.dtype | None = None) -> float:
    """Images per second of inference (no grad) or of a training step of the fine-tuned parameters."""
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else _null()
    params = finetune_parameters(model) if train else []
    opt = torch.optim.SGD(params, lr=1e-6) if train else None
    model.train(train)

    def once() -> None:
        with autocast:
            if train:
                loss = nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.no_grad():
                    model(x)

    for _ in range(warmup):
        once()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        once()
    _sync(device)
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return steps * batch_size / elapsed


def compare_throughput(original: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                       **kw: Any) -> dict[str, float]:
    """Inference and training images/s of both models, measured alternately in the same run."""
    out = {}
    for mode in ("inference", "train"):
        for name, model in (("original", original), ("pruned", pruned)):
            out[f"{mode}_{name}"] = measure_throughput(model, input_shape, batch_size, train=mode == "train", **kw)
        out[f"{mode}_speedup"] = out[f"{mode}_pruned"] / out[f"{mode}_original"]
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- prune = search + derive + cut


@dataclass
class PruneResult:
    genotype: GateGenotype
    pruned: nn.Module
    search_seconds: float
    params_original: int
    params_pruned: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: network.json of a pruned ViT fine-tuned on an image folder (its data, preprocessing and classes, which
    #: `dartboard predict` and `dartboard evaluate` read); None where it was not fine-tuned on a user's data
    network: dict[str, Any] | None = None


def prune_model(model: nn.Module, model_name: str, config: DarioConfig,
                create_kwargs: Mapping[str, Any] | None = None) -> PruneResult:
    """Algorithm 5 on ``model``, then the physical pruning recorded as a genotype."""
    from dartboard.spaces.vit import prune_vit

    start = time.perf_counter()
    searcher = DarioSearcher(model, config)
    searcher.search()
    seconds = time.perf_counter() - start
    genotype = searcher.derive(model_name, {"create_kwargs": dict(create_kwargs or {})})
    pruned = prune_vit(model, genotype)
    metrics = {**searcher.metrics(), "search_seconds": seconds, "blocks_kept": len(genotype.blocks_kept)}
    return PruneResult(genotype, pruned, seconds, count_parameters(model), count_parameters(pruned), metrics)


# ----------------------------------------------------------------------------- proxy study (thesis 6.1.2)

THESIS_STUDY_MODELS = 100  # thesis 6.1.2: 100 random pruned models per pre-trained model
THESIS_STUDY_REPEATS = 12  # thesis Tables 6.2-6.3: 95% CIs over 12 independent runs


def random_head_genotype(model_name: str, n_blocks: int, n_heads: int, generator: torch.Generator,
                         meta: Mapping[str, Any] | None = None) -> GateGenotype:
    """A uniform sample of the head-granularity space; a block whose heads are all pruned is removed
    (thesis 6.1.2: the head space "encompasses all models attainable through block-wise pruning")."""
    keep = torch.rand(n_blocks, n_heads, generator=generator) < 0.5
    blocks = tuple(b for b in range(n_blocks) if keep[b].any())
    heads = {b: tuple(int(h) for h in keep[b].nonzero().flatten()) for b in blocks}
    return GateGenotype(model_name, blocks, heads, n_blocks, n_heads, dict(meta or {}))


def proxy_scores(model: nn.Module, model_lr: float = MODEL_LR, names: Iterable[str] | None = None,
                 input_shape: tuple[int, ...] | None = None) -> dict[str, float]:
    """Every proxy of ``model`` (a pruned network): theta~ = theta - gamma d(sum M(ones))/d theta (Eq 6.6)."""
    model.eval()
    x = torch.ones(1, *(input_shape or infer_input_shape(model)), device=next(model.parameters()).device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(x).sum(), [p for _, p in named], allow_unused=True)
    theta = {n: (p if g is None else p - model_lr * g).detach() for (n, p), g in zip(named, grads, strict=True)}
    out = {}
    for name in names or PROXIES:
        proxy = PROXIES[name]
        fwd = (lambda params: functional_forward(model, params, x)) if proxy.needs_forward else None
        out[name] = float(proxy(theta, fwd).detach())
    return out


@dataclass
class StudyResult:
    spearman: dict[str, tuple[float, float]]  # proxy -> (mean over repeats, 95% CI half-width)
    pearson: dict[str, tuple[float, float]]
    runs: list[dict[str, Any]]  # per repeat: proxy values and accuracies of each sampled model

    def table(self) -> list[str]:
        rows = sorted(self.spearman, key=lambda k: -abs(self.spearman[k][0]) if math.isfinite(self.spearman[k][0])
                      else 0.0)
        lines = [f"{'proxy':<20} {'Spearman rho':>18} {'Pearson rho':>18}"]
        for k in rows:
            lines.append(f"{k:<20} {_cell(*self.spearman[k])} {_cell(*self.pearson[k])}")
        if any(math.isfinite(m) and not math.isfinite(h) for m, h in [*self.spearman.values(), *self.pearson.values()]):
            lines.append("(one repeat: no 95% interval; --repeats 2 or more gives one)")
        if any(not math.isfinite(m) for m, _ in [*self.spearman.values(), *self.pearson.values()]):
            lines.append("(n/a: the proxy or the accuracy took one value over the sampled models: no correlation)")
        return lines


def _cell(mean: float, half: float) -> str:
    """A correlation's column: mean +- the 95% half-width; the mean alone without an interval; n/a without either."""
    if not math.isfinite(mean):
        return f"{'n/a':>9}" + " " * 10
    return f"{mean:>+9.3f}" + (f" +- {half:<6.3f}" if math.isfinite(half) else " " * 10)


def _mean_ci(values: list[float]) -> tuple[float, float]:
    from scipy import stats

    v = [x for x in values if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    mean = sum(v) / len(v)
    if len(v) < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return mean, float(stats.t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))  # 95% t interval


def proxy_study(model: nn.Module, model_name: str, train: DataLoader, test: DataLoader, n_models: int = 20,
                repeats: int = 3, finetune_epochs: int = 2, seed: int = 0) -> StudyResult:
    """Sample pruned models, fine-tune each briefly, correlate each proxy with test accuracy."""
    from scipy import stats

    from dartboard.spaces.vit import prune_vit, vit_dims

    if n_models < 3:
        raise ValueError(f"n_models: correlations need at least 3 models, got {n_models}")
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats}")
    n_blocks, n_heads = vit_dims(model)
    generator = torch.Generator().manual_seed(seed)
    runs, rho_s, rho_p = [], {k: [] for k in PROXIES}, {k: [] for k in PROXIES}
    for r in range(repeats):
        values, accs = {k: [] for k in PROXIES}, []
        for _ in range(n_models):
            pruned = prune_vit(model, random_head_genotype(model_name, n_blocks, n_heads, generator))
            for k, v in proxy_scores(pruned).items():
                values[k].append(v)
            seed_everything(seed + r)
            accs.append(evaluate(finetune_last_block(pruned, train, finetune_epochs), test))
        for k in PROXIES:
            constant = len(set(values[k])) < 2 or len(set(accs)) < 2
            rho_s[k].append(math.nan if constant else float(stats.spearmanr(values[k], accs).statistic))
            rho_p[k].append(math.nan if constant else float(stats.pearsonr(values[k], accs).statistic))
        runs.append({"proxies": values, "accuracy": accs})
        log.info("proxy study: repeat %d/%d done", r + 1, repeats)
    return StudyResult({k: _mean_ci(v) for k, v in rho_s.items()}, {k: _mean_ci(v) for k, v in rho_p.items()},
                       runs)


# ----------------------------------------------------------------------------- MLflow


def log_pruned_model(pruned: nn.Module, genotype: GateGenotype, *, metrics: Mapping[str, float] | None = None,
                     params: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                     experiment: str = "dario", run_name: str | None = None) -> str:
    """Log the genotype (JSON) and the pruned state_dict (safetensors) as MLflow artifacts; returns the run id.

    Registration in the model registry is left to the registry module (it hooks in with the run id).
    """
    import mlflow
    from safetensors.torch import save_file

    from dartboard.platform.tracking.runs import ensure_experiment

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    ensure_experiment(mlflow.get_tracking_uri(), experiment)  # its artifacts beside a sqlite store
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"model": genotype.model, **{k: _param(v) for k, v in (params or {}).items()}})
        clean = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean)
        save(genotype, Path(tmp) / "genotype.json")
        state = {k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()}
        save_file(state, str(Path(tmp) / "model.safetensors"))
        mlflow.log_artifacts(tmp, artifact_path="pruned")
        return run.info.run_id


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)[:500]


def save_pruned(out_dir: str | Path, pruned: nn.Module, genotype: GateGenotype,
                network: Mapping[str, Any] | None = None) -> Path:
    """genotype.json + model.safetensors under ``out_dir`` (rebuild with ``rebuild_pruned``, or
    ``dartboard.load(out_dir)``), and ``network`` as network.json where given (an earlier pruning's is removed
    otherwise: it would describe other weights)."""
    from safetensors.torch import save_file

    from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE, PRUNED_WEIGHTS_FILE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save(genotype, out / GENOTYPE_FILE)
    if network is not None:
        (out / NETWORK_FILE).write_text(json.dumps(network, indent=2))
    else:
        (out / NETWORK_FILE).unlink(missing_ok=True)

    save_file({k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()},
              str(out / PRUNED_WEIGHTS_FILE))
    return out


def state_dict_of(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
