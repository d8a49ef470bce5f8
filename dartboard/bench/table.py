"""The tiny81 table: every member of the ``tiny81`` space trained from scratch on digits.

Protocol (:class:`TableProtocol`, recorded inside the JSON): the digits training part is
split once (fixed seed) into a fit part and a validation part; each architecture is
trained on the fit part with SGD + cosine for ``epochs`` epochs, once per seed, and
evaluated on the validation part and on the held-out test part. Per architecture the
table keeps the per-seed accuracies, their mean and std, the parameter count and the
training time. Regret (Zela & Hutter) is ``best mean test accuracy - mean test accuracy
of the queried architecture``; rank 1 is the best architecture.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from dartboard.data.catalog import load_dataset
from dartboard.data.datasets import Splits, make_loader
from dartboard.errors import MissingFileError, UserInputError, check_file
from dartboard.searchers.base import seed_everything
from dartboard.spaces import genotype as gt
from dartboard.spaces.networks import DiscreteNetwork, count_parameters
from dartboard.spaces.tiny import (
    TINY81_LAYERS,
    TINY81_NAME,
    TINY81_REDUCTIONS,
    TINY_SPACES,
    TinySpace,
    ops_key,
)

log = logging.getLogger("dartboard")
TABLE_VERSION = 1
SHIPPED_TABLE = "tiny81.json"  # dartboard/data/tiny81.json


@dataclass
class TableProtocol:
    """How every table entry is trained (small on purpose: 81 x seeds runs on a shared CPU)."""

    dataset: str = "digits"
    channels: int = 8
    layers: int = TINY81_LAYERS
    reductions: tuple[int, ...] = TINY81_REDUCTIONS
    epochs: int = 8  # 8 epochs: 243 trainings fit in ~25 min of a shared 2-core CPU
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4  # DARTS evaluation weight decay
    grad_clip: float = 5.0  # DARTS evaluation gradient clipping
    val_fraction: float = 0.2  # of the digits training part, held out for validation accuracy
    split_seed: int = 0  # fixed: every entry sees the same fit/validation split
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1  # torch intra-op threads per training (timings comparable across entries)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in (0, 1), got {self.val_fraction}")
        for name in ("channels", "layers", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")
        twice = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
        if twice:  # the same training twice: its "seed std" and Spearman between seeds would mean nothing
            raise ValueError(f"seeds: expected distinct seeds, got {','.join(map(str, self.seeds))!r} (seed "
                             f"{', '.join(map(str, twice))} more than once)")
        self.reductions = tuple(self.reductions)
        self.seeds = tuple(self.seeds)


@dataclass
class EntryRun:
    val_acc: float
    test_acc: float
    parameters: int
    seconds: float


def fit_val_split(splits: Splits, protocol: TableProtocol) -> tuple[Subset, Subset]:
    n = len(splits.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(protocol.split_seed)).tolist()
    n_val = int(round(n * protocol.val_fraction))
    return Subset(splits.train, perm[n_val:]), Subset(splits.train, perm[:n_val])


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(make_loader(dataset, len(dataset), shuffle=False, seed=0)))
    return x, y


@torch.no_grad()
def _accuracy(net: nn.Module, loader) -> float:
    net.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((net(x).argmax(1) == y).sum())
        total += y.numel()
    return correct / max(total, 1)


def train_entry(genotype: gt.Genotype, splits: Splits, protocol: TableProtocol, seed: int) -> EntryRun:
    """Train one architecture with the protocol and one seed; validation and test accuracy."""
    seed_everything(seed)
    info = splits.info
    net = DiscreteNetwork(genotype, C=protocol.channels, num_classes=info.num_classes, layers=protocol.layers,
                          in_channels=info.in_channels, input_size=info.input_size,
                          reductions=protocol.reductions)
    fit, val = fit_val_split(splits, protocol)
    x_fit, y_fit = _tensors(fit)
    shuffle = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=protocol.lr, momentum=protocol.momentum,
                          weight_decay=protocol.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, protocol.epochs)
    start = time.perf_counter()
    for _ in range(protocol.epochs):
        net.train()
        # Batches from preloaded tensors (a DataLoader's per-sample indexing costs more than
        # the step of these tiny networks); same shuffling semantics, seeded by ``seed``.
        perm = torch.randperm(len(y_fit), generator=shuffle)
        for idx in perm.split(protocol.batch_size):
            x, y = x_fit[idx], y_fit[idx]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            nn.utils.clip_grad_norm_(net.parameters(), protocol.grad_clip)
            opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    val_acc = _accuracy(net, [_tensors(val)])
    test_acc = _accuracy(net, [_tensors(splits.test)])
    return EntryRun(val_acc, test_acc, count_parameters(net), seconds)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties) = Pearson correlation of the ranks."""
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var > 0 else 0.0


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of ``values`` in ascending order, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass
class Table:
    """A loaded table: lookup by genotype or key, regret and rank."""

    entries: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best_test(self) -> float:
        return max(e["test_mean"] for e in self.entries.values())

    @property
    def best_val(self) -> float:
        return max(e["val_mean"] for e in self.entries.values())

    @property
    def space(self) -> TinySpace:
        return TINY_SPACES[self.meta.get("space", TINY81_NAME)]

    def entry(self, genotype_or_key: gt.Genotype | str) -> dict[str, Any] | None:
        key = genotype_or_key if isinstance(genotype_or_key, str) else self.space.genotype_key(genotype_or_key)
        return None if key is None else self.entries.get(key)

    def regret(self, genotype_or_key: gt.Genotype | str) -> float | None:
        """Test regret = best mean test accuracy in the table - mean test accuracy of this one."""
        e = self.entry(genotype_or_key)
        return None if e is None else self.best_test - e["test_mean"]

    def rank(self, genotype_or_key: gt.Genotype | str) -> int | None:
        """1 + number of members with a strictly higher mean test accuracy (1 = best)."""
        e = self.entry(genotype_or_key)
        if e is None:
            return None
        return 1 + sum(1 for o in self.entries.values() if o["test_mean"] > e["test_mean"])

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta, "protocol": self.protocol, "entries": list(self.entries.values())}


def table_from_dict(data: dict[str, Any]) -> Table:
    if not isinstance(data, dict) or data.get("space") not in TINY_SPACES:
        got = data.get("space") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"space: expected a table of {', '.join(map(repr, TINY_SPACES))}, got {got!r}")
    missing = [k for k in ("protocol", "entries") if k not in data]
    if missing:
        raise ValueError(f"missing {' and '.join(map(repr, missing))}; a table is what `dartboard bench build-table` "
                         f"writes")
    entries = {e["key"]: e for e in data["entries"]}
    meta = {k: v for k, v in data.items() if k not in ("protocol", "entries")}
    return Table(entries, data["protocol"], meta)


def load_table(path: str | Path | None = None) -> Table:
    """The shipped table (``dartboard/data/tiny81.json``) or the one at ``path``."""
    if path is None:
        text = resources.files("dartboard").joinpath("data", SHIPPED_TABLE).read_text()
    else:
        if not Path(path).exists():
            raise MissingFileError(f"table {str(path)!r} does not exist; build one with `dartboard bench build-table`")
        text = check_file(path, "table").read_text()
    try:
        data = json.loads(text)
        return table_from_dict(data)
    except (json.JSONDecodeError, ValueError) as err:
        if path is None:  # the shipped table: a packaging bug, not the user's
            raise
        raise ValueError(f"table {str(path)!r}: {' '.join(str(err).split())}") from None


def summarize(key: str, ops: Sequence[str], runs: Sequence[EntryRun], seeds: Sequence[int],
              space: TinySpace = TINY_SPACES[TINY81_NAME]) -> dict[str, Any]:
    val_mean, val_std = _mean_std([r.val_acc for r in runs])
    test_mean, test_std = _mean_std([r.test_acc for r in runs])
    return {"key": key, "ops": list(ops), "genotype": gt.to_dict(space.genotype_of_ops(list(ops))),
            "seeds": list(seeds), "val_acc": [r.val_acc for r in runs], "test_acc": [r.test_acc for r in runs],
            "val_mean": val_mean, "val_std": val_std, "test_mean": test_mean, "test_std": test_std,
            "parameters": runs[0].parameters, "train_seconds": statistics.fmean(r.seconds for r in runs)}


def table_statistics(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Non-degeneracy numbers: spread of the means vs the seed spread, rank correlation between seeds."""
    means = [e["test_mean"] for e in entries]
    n_seeds = min(len(e["test_acc"]) for e in entries)
    correlations = {}
    for i in range(n_seeds):
        for j in range(i + 1, n_seeds):
            correlations[f"{i}-{j}"] = spearman([e["test_acc"][i] for e in entries],
                                                [e["test_acc"][j] for e in entries])
    return {"best_test_mean": max(means), "worst_test_mean": min(means),
            "mean_seed_std_test": statistics.fmean(e["test_std"] for e in entries),
            "spearman_between_seeds_test": correlations,
            "spearman_val_vs_test": spearman([e["val_mean"] for e in entries], means),
            "separable_pairs": separable_pairs(entries),
            "random_search_regret": {str(k): random_k_regret(entries, k) for k in RANDOM_K if k < len(entries)}}


RANDOM_K = (1, 5, 10, 20)  # random-search budgets (members trained) of the informativeness statistics


def separable_pairs(entries: Sequence[dict[str, Any]]) -> float:
    """Share of member pairs whose mean test accuracies differ by more than the sum of their seed
    stds (their +-1 std intervals do not overlap): how much of the ranking is above seed noise."""
    items = [(e["test_mean"], e["test_std"]) for e in entries]
    pairs = [(a, b) for i, a in enumerate(items) for b in items[i + 1:]]
    return sum(abs(a[0] - b[0]) > a[1] + b[1] for a, b in pairs) / max(len(pairs), 1)


def random_k_regret(entries: Sequence[dict[str, Any]], k: int, draws: int = 2000, seed: int = 0) -> float:
    """Expected test regret of random search that trains ``k`` distinct members and keeps the best
    one on validation (Monte Carlo, seeded): small values for small ``k`` mean a table too easy to
    separate searchers (tiny81: 5 or 6 samples are within one std of DARTS)."""
    import random

    rng = random.Random(seed)
    best = max(e["test_mean"] for e in entries)
    total = 0.0
    for _ in range(draws):
        pick = max(rng.sample(list(entries), k), key=lambda e: e["val_mean"])
        total += best - pick["test_mean"]
    return total / draws


def build_table(protocol: TableProtocol, out: str | Path, command: str = "",
                keys: Sequence[str] | None = None, on_entry: Callable[[int, int, dict], None] | None = None,
                reverse: bool = False, offset: int = 0, space: str = TINY81_NAME) -> Table:
    """Train every member (or only ``keys``) with every seed; write the JSON after each entry.

    Resumable and shareable: before each entry the file is re-read, and entries already in it
    are kept and skipped, so a second process started with ``reverse=True`` (or a start
    ``offset`` into the order) on the same file builds from elsewhere, in parallel.

    Before any training: ``space`` and ``offset`` (in ``[0, entries)``) are checked, and ``out``, if there,
    must be a table of the same ``protocol`` (:func:`existing_entries`): a :class:`UserInputError` otherwise.
    """
    out = Path(out)
    todo = build_order(space, keys, reverse, offset)
    existing_entries(out, protocol)
    torch.set_num_threads(protocol.threads)
    splits = load_dataset(protocol.dataset)
    tiny = TINY_SPACES[space]
    start = time.perf_counter()
    done: dict[str, dict] = {}
    for n, ops in enumerate(todo, start=1):
        key = ops_key(ops)
        done.update(existing_entries(out, protocol))
        if key not in done:
            runs = [train_entry(tiny.genotype_of_ops(list(ops)), splits, protocol, s) for s in protocol.seeds]
            done[key] = summarize(key, ops, runs, protocol.seeds, tiny)
            _write(out, protocol, command, done, time.perf_counter() - start, tiny)
        if on_entry is not None:
            on_entry(n, len(todo), done[key])
    _write(out, protocol, command, done, time.perf_counter() - start, tiny)
    return load_table(out)


def build_order(space: str = TINY81_NAME, keys: Sequence[str] | None = None, reverse: bool = False,
                offset: int = 0, flag: str = "offset") -> list[tuple[str, ...]]:
    """The members that :func:`build_table` trains, in its order: all of ``space`` (or only ``keys``), reversed
    if asked, then rotated to start ``offset`` entries in. An offset outside ``[0, entries)`` is refused
    (``flag`` names it in the message) rather than wrapped around."""
    if space not in TINY_SPACES:
        raise UserInputError(f"space: expected one of {', '.join(TINY_SPACES)}, got {space!r}")
    todo = [tuple(ops) for ops in TINY_SPACES[space].enumerate_ops() if keys is None or ops_key(ops) in keys]
    if reverse:
        todo.reverse()
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < max(len(todo), 1):
        raise UserInputError(f"{flag}: expected an integer in [0, {max(len(todo) - 1, 0)}] (the start among the "
                             f"{len(todo)} entries to build), got {offset!r}")
    return todo[offset:] + todo[:offset]


def existing_entries(out: str | Path, protocol: TableProtocol, flag: str = "out") -> dict[str, dict]:
    """The entries already in the table file ``out`` (none if there is no file): a folder, a file that is no
    table, or a table of another protocol is refused (``flag`` names it), as building on it would fail at the
    first entry written."""
    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"{flag}: {str(out)!r} is a folder; expected the path of the table's JSON file")
    if not out.exists():
        return {}
    try:
        previous = json.loads(out.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"{flag}: {str(out)!r} is not a table file that can be resumed "
                             f"({' '.join(str(err).split())}); choose another path") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("entries", []), list) \
            or not all(isinstance(e, dict) and "key" in e for e in previous.get("entries", [])):
        raise UserInputError(f"{flag}: {str(out)!r} is not a table that `dartboard bench build-table` writes; "
                             f"choose another path")
    if previous.get("protocol") != _protocol_dict(protocol):
        raise UserInputError(f"{flag}: {str(out)!r} holds a table made with another protocol "
                             f"({_protocol_difference(previous.get('protocol'), protocol)}); choose another path or "
                             f"the protocol it was made with")
    return {e["key"]: e for e in previous.get("entries", [])}


def _protocol_difference(recorded: Any, protocol: TableProtocol) -> str:
    if not isinstance(recorded, dict):
        return "none recorded"
    wanted = _protocol_dict(protocol)
    differ = [f"{k} {recorded.get(k)!r} there, {wanted[k]!r} here" for k in wanted if recorded.get(k) != wanted[k]]
    return "; ".join(differ) or "other fields"


def _protocol_dict(protocol: TableProtocol) -> dict[str, Any]:
    d = asdict(protocol)
    d["reductions"], d["seeds"] = list(protocol.reductions), list(protocol.seeds)
    return d


def _write(out: Path, protocol: TableProtocol, command: str, done: dict[str, dict], seconds: float,
           tiny: TinySpace = TINY_SPACES[TINY81_NAME]) -> None:
    done = {**existing_entries(out, protocol), **done}  # keep what another builder wrote meanwhile
    order = [ops_key(ops) for ops in tiny.enumerate_ops()]
    entries = [done[k] for k in order if k in done]
    data = {"space": tiny.name, "version": TABLE_VERSION, "ops": list(tiny.ops),
            "complete": len(entries) == len(order), "command": command, "torch": torch.__version__,
            "build_seconds_last_session": round(seconds, 1),
            "statistics": table_statistics(entries) if len(entries) > 2 else {},
            "protocol": _protocol_dict(protocol), "entries": entries}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out)
