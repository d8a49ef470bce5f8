"""The ColorNAS comparison (study ``colornas-comparison``) without Ray: every variant x seed searched
and trained in this process, one after the other, then the table next to the thesis' Table A.1.

The whole study runs on the study runner (Ray Train trials, MLflow, the ablation table):

    dartboard ablate colornas-comparison

This script runs the same study file's trials (the same search and training configurations, built
by the study runner's own ``trial_run_config``) with the budget scaled down by flags, for a machine
where a Ray cluster is too much:

    python benchmarks/colornas_comparison.py --seeds 0 --epochs 3 --cells 3 --final-epochs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

#: Thesis Table A.1 (CIFAR-10 / CIFAR-100 top-1 %, best of 4 runs; params in M; search GPU-days).
THESIS_TABLE_A1 = {
    "RB": {"params_m": 1.7, "c10": 92.7, "c100": 76.2, "gpu_days": 0.25},
    "RGB": {"params_m": 2.9, "c10": 98.1, "c100": 81.0, "gpu_days": 0.5},
    "RGBY": {"params_m": 3.2, "c10": 96.4, "c100": 76.9, "gpu_days": 1.0},
    "FairDARTS": {"params_m": 1.3, "c10": 96.5, "c100": 83.8, "gpu_days": 0.25},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="colornas-comparison")
    ap.add_argument("--seeds", default=None, help="comma-separated (default: the study's)")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="search epochs (default: the study's)")
    ap.add_argument("--C", type=int, default=None, help="search channels of every network")
    ap.add_argument("--cells", type=int, default=None, help="cells of every search network")
    ap.add_argument("--final-epochs", type=int, default=None)
    ap.add_argument("--final-channels", type=int, default=None)
    ap.add_argument("--final-layers", type=int, default=None)
    ap.add_argument("--out", default="runs/colornas-comparison")
    args = ap.parse_args()

    import torch

    from dartboard.data.catalog import load_dataset
    from dartboard.platform.config import SearchRunConfig
    from dartboard.platform.ray.runner import load_study
    from dartboard.platform.ray.space import trial_run_config
    from dartboard.platform.run import run_search_job
    from dartboard.spaces import genotype as gt
    from dartboard.training.final import TrainConfig, train_genotype

    torch.set_num_threads(1)
    overrides = {k: v for k, v in {"epochs": args.epochs}.items() if v is not None}
    cfg = load_study(args.study, overrides)
    options = {**cfg.options, **{k: v for k, v in {"C": args.C, "layers": args.cells}.items() if v is not None}}
    cfg = cfg.model_copy(update={"options": options})
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.trial_seeds()
    variants = args.variants.split(",") if args.variants else [v.name for v in cfg.variants]
    final = cfg.final_training
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "results.json"  # resumable: rows already there (same study and budget) are kept
    results = [r for r in json.loads(done.read_text())["results"] if r["variant"] in variants and r["seed"] in seeds] \
        if done.is_file() else []
    for name in variants:
        for seed in seeds:
            if any(r["variant"] == name and r["seed"] == seed for r in results):
                continue
            run = trial_run_config(cfg, {"variant": name, "seed": seed})
            run["out"] = str(out / name / f"seed{seed}")
            search = run_search_job(SearchRunConfig(**run), progress=False)
            tcfg = TrainConfig(channels=args.final_channels or final.channels, layers=args.final_layers or final.layers,
                               epochs=args.final_epochs or final.epochs, batch_size=final.batch_size, seed=seed)
            start = time.perf_counter()
            trained = train_genotype(search.genotype, splits, tcfg, out / name / f"seed{seed}")
            row = {"variant": name, "seed": seed, "test_acc": trained.test_acc, "parameters": trained.parameters,
                   "search_seconds": search.seconds, "train_seconds": time.perf_counter() - start,
                   "supernet_val_acc": search.history[-1].get("val_acc"),
                   "val_acc_per_epoch": [h.get("val_acc") for h in search.history],
                   "genotype": gt.to_dict(search.genotype)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "genotype"}), flush=True)
            done.write_text(json.dumps(summary(cfg, seeds, tcfg, results), indent=1))
    print(table(results, variants))


def summary(cfg, seeds: list[int], tcfg, results: list[dict]) -> dict:
    return {"study": cfg.model_dump(), "seeds": seeds, "search_epochs": cfg.epochs, "final": tcfg.__dict__,
            "results": results}


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" + (f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def table(results: list[dict], variants: list[str]) -> str:
    lines = ["| variant | seeds | test acc (%) | parameters | search s | Table A.1: params (M) | C10 top-1 | "
             "C100 top-1 | search GPU-days |", "|---|---|---|---|---|---|---|---|---|"]
    for name in variants:
        rows = [r for r in results if r["variant"] == name]
        thesis = THESIS_TABLE_A1.get(name, {})
        cells = [str(thesis.get(k, "")) for k in ("params_m", "c10", "c100", "gpu_days")]
        lines.append(f"| {name} | {len(rows)} | {_mean_std([100 * r['test_acc'] for r in rows])} | "
                     f"{int(statistics.mean(r['parameters'] for r in rows)):,} | "
                     f"{statistics.mean(r['search_seconds'] for r in rows):.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
