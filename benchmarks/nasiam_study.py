"""NASiam study on digits: S vs S', the three frameworks, searched vs hand-designed heads, and the
backbone at random init as the floor, over seeds. Every number is on the held-out part of the
train split (linear probe, weighted kNN, retrieval mAP, collapse std); the test split is not read.

    PYTHONPATH=. OMP_NUM_THREADS=1 python3 benchmarks/nasiam_study.py --seeds 0 1 2 --search-epochs 4 \
        --pretrain-epochs 6 --out runs/nasiam-study

writes ``results.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from dartboard.data.catalog import load_dataset
from dartboard.data.datasets import make_loader, search_split
from dartboard.searchers.loop import run_search
from dartboard.searchers.registry import DataShape, build_searcher
from dartboard.spaces.genotype import MlpGenotype, to_dict
from dartboard.training import ssl_eval as E

SEARCHES = (("simsiam", "nasiam-mlp"), ("simsiam", "nasiam-mlp-reduced"), ("simclr", "nasiam-mlp"),
            ("moco", "nasiam-mlp"))
BATCH = 64
QUEUE = 512  # MoCo on ~1.1k digits: a multiple of the 2 x 64 keys of a step


def search(framework: str, space: str, seed: int, epochs: int, fit: list[int], args) -> MlpGenotype:
    views = load_dataset("digits-views")
    train, val = search_split(Subset(views.train, fit), seed)
    options = {"space": space, "C": args.channels, "epochs": epochs, "projector_layers": args.projector_layers,
               "predictor_layers": args.predictor_layers if framework == "simsiam" else 0}
    if framework == "moco":
        options["objective.queue_size"] = QUEUE
    torch.manual_seed(seed)
    engine = build_searcher(f"nasiam-{framework}", options, DataShape(1, 8, 10))
    run_search(engine, make_loader(train, BATCH, shuffle=True, seed=seed, drop_last=True),
               make_loader(val, BATCH, shuffle=True, seed=seed + 1, drop_last=True), epochs)
    return engine.derive()


def pretrain_eval(genotype: MlpGenotype, framework: str, seed: int, fit: list[int], held: list[int], args) -> dict:
    views, plain = load_dataset("digits-views"), load_dataset("digits")
    cfg = E.SslConfig(framework=framework, C=args.channels, epochs=args.pretrain_epochs, batch_size=BATCH, seed=seed,
                      objective_options={"queue_size": QUEUE} if framework == "moco" else None)
    net, history = E.pretrain(genotype, Subset(views.train, fit), (1, 8), cfg)
    return {**E.evaluate_backbone(net.backbone, plain.train, seed, fit_index=fit, held_index=held),
            "final_loss": history[-1]}


def run(args) -> list[dict]:
    rows = []
    plain = load_dataset("digits")
    for seed in args.seeds:
        fit, held = E.fit_held_out(len(plain.train), seed)
        torch.manual_seed(seed)
        floor, _ = E.head_network(MlpGenotype(E.HAND_DESIGNED["simclr"]), 1, args.channels)
        rows.append({"method": "random init (floor)", "framework": "-", "space": "-", "seed": seed,
                     **E.evaluate_backbone(floor.backbone, plain.train, seed, fit_index=fit, held_index=held)})
        for framework in ("simsiam", "simclr", "moco"):
            start = time.perf_counter()
            rows.append({"method": "hand-designed", "framework": framework, "space": "-", "seed": seed,
                         **pretrain_eval(MlpGenotype(E.HAND_DESIGNED[framework]), framework, seed, fit, held, args),
                         "seconds": time.perf_counter() - start})
        for framework, space in SEARCHES:
            start = time.perf_counter()
            genotype = search(framework, space, seed, args.search_epochs, fit, args)
            rows.append({"method": "searched", "framework": framework, "space": space, "seed": seed,
                         "genotype": to_dict(genotype)["chains"],
                         **pretrain_eval(genotype, framework, seed, fit, held, args),
                         "seconds": time.perf_counter() - start})
        print(f"seed {seed} done", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = ("probe_acc", "knn_acc", "retrieval_map", "collapse_std")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["framework"], r["space"]), []).append(r)
    lines = ["| heads | framework | space | linear probe | kNN | retrieval mAP | collapse std |",
             "|---|---|---|---|---|---|---|"]
    for (method, framework, space), rs in groups.items():
        cells = []
        for k in keys:
            values = [r[k] for r in rs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        lines.append(f"| {method} | {framework} | {space} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--projector-layers", type=int, default=3)
    parser.add_argument("--predictor-layers", type=int, default=2)
    parser.add_argument("--out", default="runs/nasiam-study")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows,
                                                  "seconds": time.perf_counter() - start}, indent=1))
    text = table(rows) + f"\n\nwall time {time.perf_counter() - start:.0f} s\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
