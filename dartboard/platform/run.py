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

from dartboard.data.catalog import absolute_root, load_dataset
from dartboard.data.datasets import Splits, check_batch, make_loader, search_split
from dartboard.errors import UserInputError, user_input
from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE, WEIGHTS_FILE
from dartboard.platform import search_checkpoint as ckpt
from dartboard.platform.checks import folder_held
from dartboard.platform.config import SearchRunConfig, resolve_device
from dartboard.platform.progress import epochs_in_words
from dartboard.platform.ray.checkpoint import STATE_FILE
from dartboard.searchers.base import seed_everything
from dartboard.searchers.loop import check_search_epochs, run_search, unsearched_reduce_cell
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces import genotype as gt
from dartboard.spaces.colour_genotype import ColourGenotype

log = logging.getLogger("dartboard")
INTERRUPTED_FILE = "interrupted.json"


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
    with user_input():  # build_searcher names the searcher in its errors
        options = cfg.searcher_options()
        device = resolve_device(cfg.device)
        searcher = build_searcher(cfg.searcher, options, data_shape(splits), device)
        check_search_epochs(searcher)
    if unsearched_reduce_cell(searcher):
        log.warning("search: the supernet of %d cell(s) has no reduction cell, so the reduce cell's alphas get no "
                    "gradient and the genotype's reduction cell is their initial values'; give layers >= 3 (or "
                    "reductions) to search it", searcher.space_info["layers"])
    return searcher


def train_fraction(cfg: SearchRunConfig, searcher: Any) -> float:
    """The user's split, else the one the searcher's schedule implies, else DARTS' 50/50."""
    if cfg.train_fraction is not None:
        return cfg.train_fraction
    return 0.5 if searcher is None else float(searcher.train_fraction)


def search_loaders(cfg: SearchRunConfig, splits: Splits, searcher: Any = None):
    train, val = search_split(splits.train, cfg.seed, train_fraction(cfg, searcher))
    check_batch(cfg.batch_size, {"search training split": len(train), "search validation split": len(val)})
    return (make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True),
            make_loader(val, cfg.batch_size, shuffle=True, seed=cfg.seed + 1, drop_last=True))


def write_search_artifacts(searcher: Any, genotype: gt.Genotype, history: list[dict[str, float]], out: Path
                           ) -> dict[str, Path]:
    """genotype.json, metrics history, alpha evolution plot and cell pictures."""
    from dartboard.platform.reports.alphas import chosen_edges, plot_alpha_history
    from dartboard.platform.reports.figures import draw_cell

    out.mkdir(parents=True, exist_ok=True)
    artifacts = {"genotype": gt.save(genotype, out / GENOTYPE_FILE)}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    artifacts["history"] = out / "history.json"
    if searcher.history:
        groups = searcher.alpha_groups()
        names = [g.name for g in groups]
        artifacts["alphas"] = plot_alpha_history(searcher.history, [g.primitives for g in groups], groups[0].rows,
                                                 out / "alpha_history.png", names, chosen_edges(genotype, names),
                                                 [g.rows for g in groups])
        (out / "alpha_history.json").write_text(json.dumps(searcher.history))
    if isinstance(genotype, gt.DartsGenotype):
        cells = {"normal": genotype.normal, "reduce": genotype.reduce}
    elif isinstance(genotype, gt.CellsGenotype):
        cells = {f"cell_{i}": c for i, c in enumerate(genotype.cells)}
    elif isinstance(genotype, ColourGenotype):  # ColorNAS: the cells of every channel's network
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
    """A search from scratch; it checkpoints every epoch under ``OUT/checkpoint`` (see :func:`resume_search_job`)."""
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    with folder_held(out, "--out"):  # no other search or training writes there meanwhile
        if _unfinished(out):  # a new search would clear its checkpoint: the interrupted one could not be finished
            how_far = _how_far(out)
            if how_far is None:
                raise UserInputError(f"--out: {str(out)!r} holds an unfinished search whose checkpoint cannot be read; "
                                     f"give another --out, or delete {str(out / ckpt.CHECKPOINT_DIR)!r} to search "
                                     f"anew there")
            raise UserInputError(f"--out: {str(out)!r} holds an unfinished search ({how_far}); finish it "
                                 f"with `dartboard search --resume {out}`, or give another --out")
        _check_no_trained_network(out)
        check_outputs(cfg, out)
        cfg = cfg.model_copy(update={"out": str(out)})
        seed_everything(cfg.seed)
        return _search(cfg, out, progress, resume=False)


def resume_search_job(folder: str | Path, progress: bool = True) -> SearchResult:
    """Finish the interrupted search in ``folder`` from its last epoch checkpoint; the result equals an
    uninterrupted run's (searcher state, RNG states and data order are restored)."""
    folder = Path(folder)
    run_file = folder / ckpt.RUN_FILE
    if not run_file.is_file() or not (folder / ckpt.CHECKPOINT_DIR / STATE_FILE).is_file():
        raise UserInputError(f"--resume: {str(folder)!r} holds no search checkpoint (expected {ckpt.RUN_FILE} "
                             f"and {ckpt.CHECKPOINT_DIR}/{STATE_FILE}, written by `dartboard search`)")
    if not _unfinished(folder):
        raise UserInputError(f"--resume: the search in {str(folder)!r} has finished; nothing to resume")
    cfg = SearchRunConfig(**ckpt.readable(folder, run_file, lambda: json.loads(run_file.read_text())))
    with folder_held(folder, "--resume"):  # the search is not still running there
        check_outputs(cfg, folder)
        return _search(cfg, folder, progress, resume=True)


def _search(cfg: SearchRunConfig, out: Path, progress: bool, resume: bool) -> SearchResult:
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    searcher = make_searcher(cfg, splits)
    from dartboard.bench.regret import attach_if_tiny81

    attach_if_tiny81(searcher)  # in the tabular space, log each epoch's looked-up regret
    train_loader, val_loader = search_loaders(cfg, splits, searcher)
    epochs = searcher.epochs
    state = ckpt.read(out) if resume else ckpt.SearchProgress()
    if resume:
        ckpt.restore(out, searcher, (train_loader, val_loader))
        (out / INTERRUPTED_FILE).unlink(missing_ok=True)
    else:
        # run.json keeps the data folder as this command's folder names it: `--resume` may run from another folder
        ckpt.start(out, {**cfg.model_dump(), "data_root": absolute_root(cfg.data_root)})
    finished = state.history  # the metrics of every finished epoch, kept if interrupted
    log.info("search: %s on %s, %s (from epoch %d), %d steps/epoch, device %s, output %s", cfg.searcher,
             cfg.dataset, epochs_in_words(epochs), len(finished) + 1, len(train_loader), searcher.device, out)
    start, spent_before = time.perf_counter(), state.seconds
    try:
        with _progress(progress, (epochs - len(finished)) * len(train_loader)) as advance:
            def on_epoch(epoch: int, m: dict[str, float]) -> None:
                finished.append(m)
                state.seconds = spent_before + time.perf_counter() - start
                ckpt.write(out, searcher, (train_loader, val_loader), state)
                log.info("epoch %3d  %s", epoch + 1, epoch_line(m))

            if not searcher.stop_requested:
                run_search(searcher, train_loader, val_loader, epochs, start_epoch=len(finished),
                           on_epoch=on_epoch, on_step=lambda i, n: advance())
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from the command line: save what exists, then stop
        save_interrupted(cfg, searcher, finished, epochs, out)
        raise
    genotype = searcher.derive()
    if finished and finished[-1].get("arch_steps") == 0.0:  # e.g. FIMT's schedule: the Fisher trace stayed high
        log.warning("search: no alpha step in %s (arch_steps 0: the update schedule never let one run); the genotype "
                    "is the parse of the initial alphas, searched by nothing: give more epochs",
                    epochs_in_words(len(finished)))
    artifacts = write_search_artifacts(searcher, genotype, finished, out)
    result = SearchResult(genotype, finished, out, state.seconds, artifacts, searcher)
    if cfg.mlflow:
        from dartboard.platform.tracking.runs import log_search_run

        log_search_run(cfg, result)
    return result


def _check_no_trained_network(out: Path) -> None:
    """A network trained in ``out`` (``dartboard train`` of the folder writes it beside the search's genotype) is
    refused: a new search would replace ``genotype.json`` under its weights, and the folder would then describe a
    network other than the one its weights belong to (pooling ops have no weights: the weights could even load).
    A finished search alone is replaced, with a warning."""
    trained = [name for name in (WEIGHTS_FILE, NETWORK_FILE) if (out / name).is_file()]
    if trained:
        raise UserInputError(f"--out: {str(out)!r} holds a network trained from its {GENOTYPE_FILE} "
                             f"({', '.join(trained)}); a new search would replace the genotype under those weights: "
                             f"give another --out")
    if (out / GENOTYPE_FILE).is_file():
        log.warning("search: %s holds a finished search; its files are replaced by this one's", out)


def _unfinished(folder: Path) -> bool:
    """Whether ``folder`` holds a search that ``--resume`` can finish: its config and an epoch checkpoint, and no
    genotype of a finished search (an interrupted one writes its genotype and ``interrupted.json``; a killed one
    neither)."""
    return ((folder / ckpt.RUN_FILE).is_file() and (folder / ckpt.CHECKPOINT_DIR / STATE_FILE).is_file()
            and (not (folder / GENOTYPE_FILE).is_file() or (folder / INTERRUPTED_FILE).is_file()))


def _how_far(folder: Path) -> str | None:
    """How many epochs the unfinished search in ``folder`` has done; None where its checkpoint cannot be read."""
    try:
        return f"{epochs_in_words(len(ckpt.read(folder).history))} done"
    except (OSError, ValueError, KeyError):  # UserInputError is a ValueError
        return None


def check_outputs(cfg: SearchRunConfig, out: Path) -> None:
    """Before the search: its tracking server answers (``folder_held``, around it, found the folder writable)."""
    from dartboard.platform.checks import check_tracking_server

    if cfg.mlflow:
        from dartboard.platform.tracking.runs import tracking_uri

        check_tracking_server(tracking_uri(cfg.tracking_uri))


def save_interrupted(cfg: SearchRunConfig, searcher: Any, finished: list[dict[str, float]], epochs: int, out: Path
                     ) -> None:
    """After an interrupt: the artifacts of the finished epochs (genotype derived from the alphas as they
    are now, history, pictures), ``interrupted.json`` saying how far the search got, and an MLflow run
    marked KILLED. The last epoch's checkpoint stays for ``dartboard search --resume OUT``."""
    if not finished:
        log.warning("search interrupted before its first epoch ended: nothing to save")
        return
    genotype = searcher.derive()
    artifacts = write_search_artifacts(searcher, genotype, finished, out)
    (out / INTERRUPTED_FILE).write_text(json.dumps({"epochs_finished": len(finished), "epochs": epochs}))
    log.warning("search interrupted after %d of %d epochs: %s holds their history and the genotype derived "
                "from the alphas at the interrupt; `dartboard search --resume %s` finishes it", len(finished),
                epochs, out, out)
    if cfg.mlflow:
        from dartboard.platform.tracking.runs import log_search_run

        log_search_run(cfg, SearchResult(genotype, finished, out, 0.0, artifacts, searcher), status="KILLED")


#: The metrics an epoch's log line starts with, to four decimals, where the searcher's objective has them (a
#: regression, such as the PMSM flux models', has no accuracy); the others follow to four digits.
MAIN_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def epoch_line(m: dict[str, float]) -> str:
    main = [f"{k} {m[k]:.4f}" for k in MAIN_METRICS if k in m]
    return "  ".join(main + [f"{k} {v:.4g}" for k, v in m.items() if k not in (*MAIN_METRICS, "epoch")])


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
