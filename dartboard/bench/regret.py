"""Anytime regret of a search in tiny81 (Zela & Hutter: query the table at every epoch).

After each epoch the architecture the searcher currently derives is looked up in the
table (not trained): its mean test accuracy, its test regret
``r_t = max_a acc_test(a) - acc_test(a_t)`` and its rank among the 81 members. The numbers
are added to the epoch's metrics (so the platform logs them to MLflow with the others)
and kept in :attr:`RegretTracker.curve`.

Random search with the same budget (:func:`random_search_curve`) is the baseline: its
budget at epoch ``t`` is the wall-clock time the gradient searchers spent by then, spent
on training sampled architectures (one seed's table entry per training, cost = the
table's recorded training time); the incumbent is the sample with the best validation
accuracy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from dartboard.bench.table import Table
from dartboard.spaces import genotype as gt
from dartboard.spaces.tiny import TINY81_LAYERS, TINY81_NAME, TINY81_REDUCTIONS

PREFIX = "tiny81_"


def lookup_metrics(table: Table, genotype: gt.Genotype | str | None, prefix: str = PREFIX) -> dict[str, float]:
    """Looked-up test/val accuracy, regret and rank of ``genotype`` (or its key); NaN when it
    is not a member."""
    entry = None if genotype is None else table.entry(genotype)
    if entry is None:
        nan = float("nan")
        return {f"{prefix}test_acc": nan, f"{prefix}val_acc": nan, f"{prefix}regret": nan, f"{prefix}rank": nan,
                f"{prefix}on_table": 0.0}
    return {f"{prefix}test_acc": entry["test_mean"], f"{prefix}val_acc": entry["val_mean"],
            f"{prefix}regret": table.best_test - entry["test_mean"], f"{prefix}rank": float(table.rank(entry["key"])),
            f"{prefix}on_table": 1.0}


class RegretTracker:
    """An epoch hook that adds the looked-up numbers of the derived architecture to every
    epoch's metrics. ``attach(searcher)`` adds it to the searcher's epoch hooks, so it works
    with any loop that calls the Searcher protocol: ``run_search``, the Ray Train worker, a notebook.
    """

    def __init__(self, table: Table, prefix: str = PREFIX):
        self.table = table
        self.prefix = prefix
        self.curve: list[dict[str, Any]] = []

    def record(self, genotype: gt.Genotype, epoch: int | None = None) -> dict[str, float]:
        metrics = lookup_metrics(self.table, genotype, self.prefix)
        from dartboard.spaces.tiny import genotype_key

        self.curve.append({"epoch": len(self.curve) + 1 if epoch is None else epoch, "key": genotype_key(genotype),
                           **metrics})
        return metrics

    def end_epoch(self, ctx: Any) -> dict[str, float]:
        if all(math.isfinite(v) for k, v in ctx.epoch_metrics.items() if k.endswith("_loss")):
            return self.record(ctx.derive(), ctx.epoch)
        # a diverged epoch derives nothing (its alphas may be NaN); the loop reports the divergence
        return lookup_metrics(self.table, None, self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {"curve": list(self.curve)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = list(state["curve"])

    def attach(self, searcher: Any) -> RegretTracker:
        searcher.add_hook(self)
        return self


def searches_tiny81(searcher: Any) -> bool:
    """Whether ``searcher`` runs on the tiny81 supernet with the table's network shape."""
    info = searcher.space_info
    return (info.get("space") == TINY81_NAME and info.get("layers") == TINY81_LAYERS
            and tuple(info.get("reductions", ())) == TINY81_REDUCTIONS)


def attach_if_tiny81(searcher: Any, table: Table | None = None) -> RegretTracker | None:
    """For the platform: track regret when the searcher searches tiny81 (no-op otherwise)."""
    if not searches_tiny81(searcher):
        return None
    from dartboard.bench.table import load_table

    return RegretTracker(table or load_table()).attach(searcher)


def random_search_curve(table: Table, budgets_seconds: Sequence[float], seed: int,
                        prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Random search over the table with cumulative wall-clock budgets (one per epoch).

    Each sample trains one architecture (drawn without replacement) with one random seed
    of the protocol and pays that entry's recorded training time; the incumbent is the
    sample with the highest observed validation accuracy, and at least one sample is
    always taken. Returns the per-epoch curve with the same keys as :class:`RegretTracker`.
    """
    rng = random.Random(seed)
    keys = list(table.entries)
    rng.shuffle(keys)
    spent, n_samples, incumbent, best_val = 0.0, 0, None, -math.inf
    curve = []
    for epoch, budget in enumerate(budgets_seconds, start=1):
        while n_samples < len(keys) and (n_samples == 0 or spent + table.entries[keys[n_samples]]["train_seconds"]
                                         <= budget):
            entry = table.entries[keys[n_samples]]
            observed = entry["val_acc"][rng.randrange(len(entry["val_acc"]))]
            spent += entry["train_seconds"]
            n_samples += 1
            if observed > best_val:
                incumbent, best_val = entry["key"], observed
        metrics = lookup_metrics(table, incumbent, prefix)
        curve.append({"epoch": epoch, "key": incumbent, **metrics, f"{prefix}samples": float(n_samples)})
    return curve
