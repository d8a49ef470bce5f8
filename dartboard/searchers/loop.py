"""The search loop shared by the local CLI and the Ray Train worker: epochs of
``searcher.step(train_batch, val_batch)`` followed by ``searcher.end_epoch()``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dartboard.searchers.base import Batch, Searcher

EpochCallback = Callable[[int, dict[str, float]], None]
StepCallback = Callable[[int, int], None]


def check_search_epochs(searcher: Searcher) -> None:
    """A search whose warm-up (epochs of weight steps only) takes every epoch takes no alpha step: its genotype
    would be derived from the initial alphas, searched by nothing. Refused where a search is run (and a study's
    variants are built), not where a searcher is built: a searcher stepped by hand is no such search."""
    warmup = getattr(getattr(searcher, "config", None), "warmup_epochs", 0) or 0
    if warmup >= searcher.epochs:
        raise ValueError(f"warmup_epochs: {warmup} warm-up epoch(s) (weights only) leave no search epoch of the "
                         f"{searcher.epochs} (epochs): the architecture would be derived from its initial alphas; "
                         f"give more epochs than warm-up epochs (epochs, warmup_epochs)")


def unsearched_reduce_cell(searcher: Searcher) -> bool:
    """Whether the searcher has a ``reduce`` alpha group but its supernet no reduction cell (fewer than 3 cells and
    no ``reductions``): those alphas get no gradient, and the genotype's reduction cell is their initial values'."""
    info = getattr(searcher, "space_info", None) or {}
    names = [g.name for g in searcher.alpha_groups()]
    return "reduce" in names and "reductions" in info and not info["reductions"]


def run_epoch(searcher: Searcher, train_loader: Iterable[Batch], val_loader: Iterable[Batch],
              on_step: StepCallback | None = None) -> dict[str, float]:
    """One epoch over ``train_loader``; ``val_loader`` is cycled alongside it."""
    val_iter = iter(_cycle_loader(val_loader))
    n = 0
    for n, train_batch in enumerate(train_loader, start=1):
        searcher.step(train_batch, next(val_iter))
        if on_step is not None:
            on_step(n, len(train_loader) if hasattr(train_loader, "__len__") else -1)
    if n == 0:
        raise ValueError("train loader yielded no batch: the dataset is smaller than one batch")
    return searcher.end_epoch()


def _cycle_loader(loader: Iterable[Batch]) -> Iterable[Batch]:
    # Re-iterate (reshuffling) rather than replaying cached batches like itertools.cycle.
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("validation loader yielded no batch")


def run_search(searcher: Searcher, train_loader: Iterable[Batch], val_loader: Iterable[Batch], epochs: int,
               start_epoch: int = 0, on_epoch: EpochCallback | None = None,
               on_step: StepCallback | None = None) -> list[dict[str, float]]:
    """Epochs ``start_epoch .. epochs-1``; stops early when the searcher sets ``stop_requested``."""
    history = []
    for epoch in range(start_epoch, epochs):
        metrics = run_epoch(searcher, train_loader, val_loader, on_step)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if getattr(searcher, "stop_requested", False):
            break
    return history


__all__ = ["run_epoch", "run_search"]
