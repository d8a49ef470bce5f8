"""A search run on this machine: data -> searcher -> epochs -> genotype and pictures.

The Ray Train worker (``worker.py``) runs the same pieces per rank; this module is the
single-process path behind ``dartboard search``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dartboard.data.datasets import Splits, load_dataset, make_loader, search_split
from dartboard.errors import UserInputError, user_input
from dartboard.platform.config import SearchRunConfig, resolve_device
from dartboard.searchers.base import seed_everything
from dartboard.searchers.loop import run_search
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt

log = logging.getLogger("dartboard")


@dataclass
class SearchResult:
    genotype: gt.Genotype
    history: list[dict[str, float]]
    out_dir: Path
    seconds: float
    artifacts: dict[str, Path] = field(default_factory=dict)
    searcher: Any = None


def default_out_dir(cfg: SearchRunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"search-{cfg.searcher}-{cfg.dataset}-s{cfg.seed}-{stamp}"


def data_shape(splits: Splits) -> DataShape:
    return DataShape(splits.info.in_channels, splits.info.input_size, splits.info.num_classes)


def make_searcher(cfg: SearchRunConfig, splits: Splits):
    """The searcher of the run. Its options, space and device come from the user: the registry checks
    them (names, values) before it builds, so a ``ValueError`` from here is about that input."""
    with user_input(f"searcher {cfg.searcher!r}"):
        options = cfg.searcher_options()
        device = resolve_device(cfg.device)
        return build_searcher(cfg.searcher, options, data_shape(splits), device)


def train_fraction(cfg: SearchRunConfig, searcher: Any) -> float:
    """The user's split, else the one the searcher's schedule implies, else DARTS' 50/50."""
    if cfg.train_fraction is not None:
        return cfg.train_fraction
    return 0.5 if searcher is None else float(searcher.train_fraction)


def search_loaders(cfg: SearchRunConfig, splits: Splits, searcher: Any = None):
    train, val = search_split(splits.train, cfg.seed, train_fraction(cfg, searcher))
    if len(train) < cfg.batch_size:
        raise UserInputError(f"batch_size: {cfg.batch_size} is larger than the search training split "
                         f"({len(train)} samples)")
    return (make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True),
            make_loader(val, cfg.batch_size, shuffle=True, seed=cfg.seed + 1, drop_last=True))


def write_search_artifacts(searcher: Any, genotype: gt.Genotype, history: list[dict[str, float]], out: Path
                           ) -> dict[str, Path]:
    """genotype.json, metrics history, alpha evolution plot and cell pictures."""
    from dartboard.platform.reports.figures import draw_cell, plot_alpha_history

    out.mkdir(parents=True, exist_ok=True)
    artifacts = {"genotype": gt.save(genotype, out / "genotype.json")}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    artifacts["history"] = out / "history.json"
    if searcher.history:
        groups = searcher.alpha_groups()
        artifacts["alphas"] = plot_alpha_history(searcher.history, [g.primitives for g in groups], groups[0].rows,
                                                 out / "alpha_history.png", [g.name for g in groups])
        (out / "alpha_history.json").write_text(json.dumps(searcher.history))
    if isinstance(genotype, gt.DartsGenotype):
        cells = {"normal": genotype.normal, "reduce": genotype.reduce}
    elif isinstance(genotype, gt.CellsGenotype):
        cells = {f"cell_{i}": c for i, c in enumerate(genotype.cells)}
    elif isinstance(genotype, gt.ColourGenotype):  # ColorNAS: the cells of every channel's network
        from dartboard.spaces.colour import colour_model_spec

        cells = {f"{name}_{k}": c for name, ch in zip(colour_model_spec(genotype.colour_model).channels,
                                                        genotype.channels, strict=True)
                 for k, c in _named_cells(ch).items()}
    else:
        cells = {}
    for name, cell in cells.items():
        artifacts[name] = draw_cell(cell, out / f"{name}.png", title=name)
    return artifacts


def _named_cells(genotype: gt.DartsGenotype | gt.CellsGenotype) -> dict[str, gt.CellGenotype]:
    if isinstance(genotype, gt.DartsGenotype):
        return {"normal": genotype.normal, "reduce": genotype.reduce}
    return {f"cell_{i}": c for i, c in enumerate(genotype.cells)}


def run_search_job(cfg: SearchRunConfig, progress: bool = True) -> SearchResult:
    seed_everything(cfg.seed)
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    searcher = make_searcher(cfg, splits)
    from dartboard.bench.regret import attach_if_tiny81

    attach_if_tiny81(searcher)  # in the tabular space, log each epoch's looked-up regret
    train_loader, val_loader = search_loaders(cfg, splits, searcher)
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    epochs = searcher.epochs
    log.info("search: %s on %s, %d epochs, %d steps/epoch, device %s, output %s", cfg.searcher, cfg.dataset,
             epochs, len(train_loader), searcher.device, out)
    finished: list[dict[str, float]] = []  # the metrics of every finished epoch, kept if interrupted
    start = time.perf_counter()
    try:
        with _progress(progress, epochs * len(train_loader)) as advance:
            def on_epoch(epoch: int, m: dict[str, float]) -> None:
                finished.append(m)
                log.info("epoch %3d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  %s", epoch + 1,
                         m.get("train_loss", float("nan")), m.get("train_acc", float("nan")),
                         m.get("val_loss", float("nan")), m.get("val_acc", float("nan")),
                         _extra(m))

            history = run_search(searcher, train_loader, val_loader, epochs, on_epoch=on_epoch,
                                 on_step=lambda i, n: advance())
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from the command line: save what exists, then stop
        save_interrupted(searcher, finished, epochs, out)
        raise
    seconds = time.perf_counter() - start
    genotype = searcher.derive()
    artifacts = write_search_artifacts(searcher, genotype, history, out)
    result = SearchResult(genotype, history, out, seconds, artifacts, searcher)
    if cfg.mlflow:
        from dartboard.platform.tracking.runs import log_search_run

        log_search_run(cfg, result)
    return result


def save_interrupted(searcher: Any, finished: list[dict[str, float]], epochs: int, out: Path) -> None:
    """After an interrupt: the artifacts of the finished epochs (genotype derived from the alphas as they
    are now, history, pictures) and ``interrupted.json`` saying how far the search got."""
    if not finished:
        log.warning("search interrupted before its first epoch ended: nothing to save")
        return
    write_search_artifacts(searcher, searcher.derive(), finished, out)
    (out / "interrupted.json").write_text(json.dumps({"epochs_finished": len(finished), "epochs": epochs}))
    log.warning("search interrupted after %d of %d epochs: %s holds their history and the genotype derived "
                "from the alphas at the interrupt", len(finished), epochs, out)


def _extra(m: dict[str, float]) -> str:
    skip = {"train_loss", "train_acc", "val_loss", "val_acc", "epoch"}
    return "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in skip)


class _progress:
    """A rich progress bar over all steps (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("search", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
