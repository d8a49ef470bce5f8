"""The PMSM study (thesis 6.2): the two searches in sequence, then the comparison of the derived
flux model with the thesis's baseline over several seeds, against the simulator's ground truth.

    step 1  dartboard search --searcher pmsm-depth           -> depth (hidden layers)
    step 2  dartboard search --searcher pmsm-activation --set layers=DEPTH  -> A(x) = B(U1, U2)
    compare each model trained through criterion C with the same budget, seeds x models:
            criterion C and flux / torque error on the test split, mean +- std; flux map plot

``dartboard pmsm search`` and ``dartboard pmsm compare`` are the command-line front ends.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError
from dartboard.platform.config import SearchRunConfig
from dartboard.platform.progress import counted
from dartboard.spaces import genotype as gt
from dartboard.spaces.pmsm_genotype import FluxMlpGenotype

log = logging.getLogger("dartboard")

#: A trained model's figures (mean +- std over the seeds in the table), with the words the table and the log use.
METRICS = {"criterion_test": "criterion C (test)", "flux_rmse": "flux RMSE (test)",
           "flux_rmse_grid": "flux RMSE (grid)", "torque_rmse": "torque RMSE", "parameters": "parameters",
           "seconds": "train s / run"}


@dataclass
class TwoStepResult:
    genotype: FluxMlpGenotype
    depth_genotype: FluxMlpGenotype
    seconds_depth: float
    seconds_activation: float
    out: Path


def run_two_step(out: str | Path, *, seed: int = 0, dataset: str = "pmsm", data_root: str | None = None,
                 depth_options: Mapping[str, Any] | None = None, activation_options: Mapping[str, Any] | None = None,
                 mlflow: bool = False, tracking_uri: str | None = None, progress: bool = False) -> TwoStepResult:
    """Step 1 (pmsm-depth), then step 2 (pmsm-activation) on the depth and width step 1 derived."""
    from dartboard.platform.run import run_search_job

    out = Path(out)
    check_step_options(depth_options or {}, activation_options or {}, seed=seed, data_root=data_root)
    common = {"dataset": dataset, "data_root": data_root, "seed": seed, "mlflow": mlflow, "tracking_uri": tracking_uri}
    r1 = run_search_job(SearchRunConfig(searcher="pmsm-depth", out=str(out / "step1-depth"),
                                        options=dict(depth_options or {}), **common), progress=progress)
    depth = r1.genotype
    log.info("step 1: %s (%.1f s)", depth.describe(), r1.seconds)
    options = activation_step_options(depth, activation_options or {})
    r2 = run_search_job(SearchRunConfig(searcher="pmsm-activation", out=str(out / "step2-activation"), options=options,
                                        **common), progress=progress)
    final = r2.genotype
    final = FluxMlpGenotype(final.hidden_layers, final.width, final.activation, final.decoupled,
                            {**final.meta, "step1": gt.to_dict(depth)["meta"], "seed": seed,
                             "search_seconds": {"depth": round(r1.seconds, 1), "activation": round(r2.seconds, 1)}})
    gt.save(final, out / "genotype.json")
    log.info("step 2: %s (%.1f s); written to %s", final.describe(), r2.seconds, out / "genotype.json")
    return TwoStepResult(final, depth, r1.seconds, r2.seconds, out)


def activation_step_options(depth: FluxMlpGenotype, activation_options: Mapping[str, Any]) -> dict[str, Any]:
    """Step 2's searcher options: the depth and width step 1 found (and its decoupled form), under the user's."""
    options = {"layers": depth.hidden_layers, "C": depth.width, **activation_options}
    if depth.decoupled and "space" not in options:
        options["space"] = "pmsm-activation-decoupled"
    return options


def check_step_options(depth_options: Mapping[str, Any], activation_options: Mapping[str, Any], *, seed: int = 0,
                       data_root: str | None = None, names: tuple[str, str] = ("depth_options", "activation_options")
                       ) -> None:
    """Both steps' options, before step 1 starts (a bad option of step 2 was found only after the whole of step
    1's search): step 1's searcher and step 2's are built as :func:`run_two_step` builds them, step 2's on the depth
    and width that step 1's untrained supernet derives (placeholders for the ones it will find), on the data's
    shape without loading it. ``names``: how the errors name the two option sets (the command: its flags)."""
    from dartboard.data.pmsm import FEATURES, TARGETS
    from dartboard.errors import user_input
    from dartboard.searchers.registry import DataShape, build_searcher

    shape = DataShape(len(FEATURES), 1, len(TARGETS))  # the shape of every motor's data (data/pmsm.py load_pmsm)
    common = {"dataset": "pmsm", "data_root": data_root, "seed": seed, "mlflow": False}
    with user_input(names[0]):  # builds step 1's supernet: no data, no training
        cfg = SearchRunConfig(searcher="pmsm-depth", options=dict(depth_options), **common)
        depth = build_searcher("pmsm-depth", cfg.searcher_options(), shape, "cpu").derive()
    with user_input(names[1]):
        cfg = SearchRunConfig(searcher="pmsm-activation", options=activation_step_options(depth, activation_options),
                              **common)
        build_searcher("pmsm-activation", cfg.searcher_options(), shape, "cpu")


def compare(models: Mapping[str, FluxMlpGenotype], seeds: Sequence[int], out: str | Path, *, epochs: int = 150,
            dataset: str = "pmsm", data_root: str | None = None, lr: float = 3e-3, device: str = "cpu",
            batch_size: int = 128) -> dict[str, Any]:
    """Train every model on every seed with the same budget; table (mean +- std), CSV, plot."""
    from dartboard.data.catalog import load_dataset
    from dartboard.data.datasets import check_batch
    from dartboard.training.pmsm import FluxTrainConfig, plot_flux_maps

    # Everything is checked before the first training, so that no model's results are lost to another's bad input.
    if not isinstance(models, Mapping) or not models:
        raise UserInputError(f"models: expected a mapping of names to flux_mlp genotypes, got {models!r}")
    wrong = {name: getattr(g, "kind", type(g).__name__) for name, g in models.items()
             if not isinstance(g, FluxMlpGenotype)}
    if wrong:
        named = ", ".join(f"{n!r} is {k!r}" for n, k in wrong.items())
        raise UserInputError(f"models: expected flux_mlp genotypes; {named}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserInputError(f"seeds: expected a non-empty list of integers, got {list(seeds)!r}")
    for seed in seeds:
        FluxTrainConfig(epochs=epochs, lr=lr, seed=seed, device=device, batch_size=batch_size)  # its own checks
    out = Path(out)
    splits = load_dataset(dataset, data_root)
    check_batch(batch_size, {"training split": len(splits.train)})  # before the first model trains
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    best_nets: dict[str, Any] = {}
    best_rows: dict[str, dict[str, Any]] = {}  # each model's seed of the lowest validation criterion
    start = time.perf_counter()
    for name, genotype in models.items():
        for seed in seeds:
            net, row = _train_one(name, genotype, splits, FluxTrainConfig(epochs=epochs, lr=lr, seed=seed,
                                                                          device=device, batch_size=batch_size), out)
            rows.append(row)
            if net is not None and (name not in best_rows or row["criterion_val"] < best_rows[name]["criterion_val"]):
                best_nets[name], best_rows[name] = net, row
    summary = summarize(rows, models)
    with open(out / "runs.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("model", "seed"), k))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(summary, len(seeds), epochs, measured=splits.flux is None)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps({"summary": summary, "runs": rows, "seeds": list(seeds),
                                                     "epochs": epochs, "seconds": time.perf_counter() - start},
                                                    indent=1, default=str))
    plot = plot_flux_maps(best_nets, splits, out / "flux_maps.png") if best_nets else None
    best = {name: {**row, "folder": str(out / "models" / name / f"seed{row['seed']}")}
            for name, row in best_rows.items()}
    return {"summary": summary, "runs": rows, "table": table, "plot": plot, "best": best}


#: The most grid points per current axis of a flux table: 16.8 million rows. A controller's look-up tables hold
#: tens to hundreds per axis, and a typo of 100000 would ask for 10^10 rows.
MAX_TABLE_POINTS = 4097


def check_table_options(points: Any, limit: Any) -> None:
    """The grid of a flux table: ``points`` >= 2 per axis, ``limit`` a finite positive current (or None)."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise UserInputError(f"points: expected an integer >= 2 (points per current axis), got {points!r}")
    if points > MAX_TABLE_POINTS:
        raise UserInputError(f"points: at most {MAX_TABLE_POINTS} per current axis, got {points} (a table of "
                             f"{points ** 2:,} rows)")
    if limit is not None and not (isinstance(limit, int | float) and 0 < limit < float("inf")):
        raise UserInputError(f"limit: expected a finite number > 0 (the largest |I_d|, |I_q| of the table, per unit), "
                             f"got {limit!r}")


def write_flux_table(model: str | Path, out: str | Path | None = None, *, points: int = 41,
                     limit: float | None = None, label: str | None = None) -> tuple[Path, float]:
    """The learned flux map of a trained flux model (``pmsm compare``'s ``OUT/models/NAME/seedN``) as a CSV look-up
    table: I_d, I_q, lambda_d, lambda_q and the differential inductances over a ``points`` x ``points`` grid of
    [-limit, limit]^2 (default: the box of the currents it was trained on). Returns (the file, the limit).
    ``label``: how the user named the model, in errors (default: the folder)."""
    from dartboard.training.pmsm import flux_table, load_flux_model

    check_table_options(points, limit)
    net, result = load_flux_model(model)
    if limit is None:
        limit = (result.get("data") or {}).get("current_limit")
        if limit is None:
            raise UserInputError(f"flux model {label or str(model)!r}: its result.json does not say the currents it "
                                 f"was trained on; give the table's range with --limit")
    path = Path(out) if out is not None else Path(model) / "flux_map.csv"
    columns = flux_table(net, float(limit), points)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*(c.tolist() for c in columns.values()), strict=True))
    return path, float(limit)


def _train_one(name: str, genotype: FluxMlpGenotype, splits: Any, cfg: Any, out: Path) -> tuple[Any, dict[str, Any]]:
    """One model on one seed: (network, its row), or (None, a row saying how it diverged)."""
    from dartboard.training.pmsm import TrainingDiverged, train_flux_model

    try:
        net, r = train_flux_model(genotype, splits, cfg, out / "models" / name / f"seed{cfg.seed}")
    except TrainingDiverged as err:
        log.warning("%s seed %d: %s", name, cfg.seed, err)
        return None, {"model": name, "seed": cfg.seed, "diverged": str(err)}
    row = {"model": name, "seed": cfg.seed, **{k: v for k, v in asdict(r).items() if k != "genotype"}}
    log.info("%s seed %d: %s", name, cfg.seed, run_in_words(row))
    return net, row


def run_in_words(row: Mapping[str, Any]) -> str:
    """One trained model's figures for the log: ``criterion C (test) 0.636, ..., 82 parameters, 0.6 s``."""
    words = [f"{METRICS[k]} {row[k]:.3g}" for k in ("criterion_test", "flux_rmse", "flux_rmse_grid", "torque_rmse")
             if row.get(k) is not None]  # no flux errors on measured data
    return ", ".join([*words, f"{row['parameters']:,} parameters", f"{row['seconds']:.1f} s"])


def summarize(rows: Sequence[dict[str, Any]], models: Mapping[str, FluxMlpGenotype]) -> list[dict[str, Any]]:
    out = []
    for name, genotype in models.items():
        ok = [r for r in rows if r["model"] == name and "diverged" not in r]
        entry: dict[str, Any] = {"model": name, "architecture": genotype.describe(), "runs": len(ok),
                                 "diverged": sum(1 for r in rows if r["model"] == name and "diverged" in r)}
        for m in METRICS:
            values = [float(r[m]) for r in ok if r.get(m) is not None]
            # every run diverged, or measured data (no true flux): no figure (null in comparison.json, n/a in the table)
            entry[m] = (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0) if values \
                else (None, None)
        out.append(entry)
    return out


def markdown_table(summary: Sequence[dict[str, Any]], n_seeds: int, epochs: int, measured: bool = False) -> str:
    head = f"| model | architecture | {' | '.join(METRICS.values())} | diverged |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]

    def ms(e: dict[str, Any], key: str, fmt: str = ".3g", spread: bool = True) -> str:
        mean, std = e[key]
        if mean is None:  # every run of the model diverged, or no true flux map (measured data)
            return "n/a"
        return f"{mean:{fmt}} +- {std:{fmt}}" if spread else f"{mean:{fmt}}"

    for e in summary:
        lines.append(f"| {e['model']} | {e['architecture']} | {ms(e, 'criterion_test')} | {ms(e, 'flux_rmse')} | "
                     f"{ms(e, 'flux_rmse_grid')} | {ms(e, 'torque_rmse')} | {ms(e, 'parameters', '.0f', False)} | "
                     f"{ms(e, 'seconds', '.0f', False)} | {e['diverged']}/{e['runs'] + e['diverged']} |")
    lines.append(f"\n(mean +- std over {counted(n_seeds, 'seed')}, {counted(epochs, 'epoch')} of Adam each, "
                 "per-unit values)")
    if measured:
        lines.append("(measured data: no true flux map, so no flux or torque errors)")
    return "\n".join(lines)
