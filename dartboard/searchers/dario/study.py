"""DARIO as a study's searcher: Algorithm 5 behind the Searcher protocol, so the one study runner sweeps
its outer hyperparameters (threshold, gamma, proxy, granularity) like any searcher's.

The ViT to prune is a timm model built here (``model``, ``model_kwargs``; input shape and classes come
from the data), its weights from a local ``checkpoint`` file or, without one, trained for
``pretrain_epochs`` on the search-train half (it plays the pre-trained model; nothing is downloaded).

Epochs: the first ``pretrain_epochs`` train the ViT (one AdamW step per train batch; ``val_acc`` is the
ViT's accuracy on the epoch's val batches); the others run Algorithm 5: the warm start, then
``iterations`` spread evenly over them, each epoch's share at its first step (the search reads no data:
its input is a batch of ones), and ``val_acc`` is the accuracy of the model pruned at the epoch's gates,
before any fine-tuning. The study objective ``derived`` fine-tunes that pruned model's last block and
head on the search-train half and scores it on the val half (``platform/ray/derived.py``, thesis 6.1.2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dartboard.searchers.dario.search import (
    DarioConfig,
    DarioSearcher,
    prior_mean_for_keep_probability,
)
from dartboard.searchers.dario_options import DARIO_STUDY_DEFAULTS  # noqa: F401  (this module's public name)
from dartboard.spaces.supernet import AlphaGroup


class DarioStudySearcher:
    """The Searcher protocol around :class:`DarioSearcher` (module docstring)."""

    def __init__(self, options: dict[str, Any], in_channels: int, input_size: int, num_classes: int,
                 device: str = "cpu"):
        from dartboard.spaces.vit import create_vit, load_checkpoint, vit_dims

        unknown = sorted(set(options) - set(DARIO_STUDY_DEFAULTS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a DARIO option; its options: "
                             f"{', '.join(sorted(DARIO_STUDY_DEFAULTS))}")
        o = {**DARIO_STUDY_DEFAULTS, **options}
        self.options, self.device = o, torch.device(device)
        for name in ("epochs", "pretrain_epochs", "iterations", "warmup_samples", "seed"):  # 2.7 is not 2
            low = 1 if name == "epochs" else 0
            if name == "seed" and o[name] is None:
                continue
            if isinstance(o[name], bool) or not isinstance(o[name], int) or o[name] < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {o[name]!r}")
        for name in ("pretrain_lr", "gamma", "search_lr"):  # named as the study names them (gamma: model_lr)
            if isinstance(o[name], bool) or not isinstance(o[name], (int, float)) or not 0 < o[name] < math.inf:
                raise ValueError(f"{name}: expected a number > 0, got {o[name]!r}")
        if not 0 <= int(o["pretrain_epochs"]) < int(o["epochs"]):
            raise ValueError(f"pretrain_epochs: expected 0 <= pretrain_epochs < epochs ({o['epochs']}) so that "
                             f"Algorithm 5 has an epoch, got {o['pretrain_epochs']}")
        self.create_kwargs = {**o["model_kwargs"], "img_size": input_size, "in_chans": in_channels,
                              "num_classes": num_classes}
        # Seeded by the run (the search's --seed, a study trial's seed) unless the option names a seed of its own.
        self.seed = int(torch.initial_seed()) if o["seed"] is None else int(o["seed"])
        if o["seed"] is not None:
            torch.manual_seed(self.seed)
        self.model = create_vit(o["model"], **self.create_kwargs).to(self.device)
        if o["checkpoint"]:
            load_checkpoint(self.model, o["checkpoint"], o["model"])
        self.n_blocks, self.n_heads = vit_dims(self.model)
        self.config = self._dario_config()  # validated now: a bad proxy or threshold fails before any epoch
        self.pretrain_opt = torch.optim.AdamW(self.model.parameters(), lr=float(o["pretrain_lr"]), weight_decay=0.05)
        self.dario: DarioSearcher | None = None
        self.epoch, self.stop_requested = 0, False
        self.history: list[dict[str, Any]] = []
        self._pruned: nn.Module | None = None
        self._meter = [0.0, 0, 0]  # the epoch's train loss sum, train correct, val correct
        self._seen = [0, 0]  # the epoch's train and val samples
        self._last: dict[str, float] = {}

    def _dario_config(self) -> DarioConfig:
        o = self.options
        keep = o["keep_probability"]
        mean = 0.0 if keep is None else prior_mean_for_keep_probability(float(o["threshold"]), float(keep))
        cfg = DarioConfig(granularity=o["granularity"], proxy=o["proxy"], threshold=float(o["threshold"]),
                          warmup_samples=int(o["warmup_samples"]), iterations=int(o["iterations"]),
                          search_lr=float(o["search_lr"]), model_lr=float(o["gamma"]), optimizer=o["optimizer"],
                          gate_gradient=o["gate_gradient"], warmup_mean=mean, seed=self.seed)
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ the protocol
    @property
    def epochs(self) -> int:
        return int(self.options["epochs"])

    @property
    def train_fraction(self) -> float:
        return 0.5  # pre-training and fine-tuning on one half, val_acc and the objective on the other

    @property
    def space_info(self) -> dict[str, Any]:
        return {"space": "vit-gates", "granularity": self.config.granularity, "blocks": self.n_blocks}

    def _search_epochs(self) -> int:
        return self.epochs - int(self.options["pretrain_epochs"])

    def step(self, train_batch, val_batch) -> None:
        x, y = (t.to(self.device) for t in train_batch)
        vx, vy = (t.to(self.device) for t in val_batch)
        if self.epoch < int(self.options["pretrain_epochs"]):
            self.model.train()
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits, y)
            self.pretrain_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.pretrain_opt.step()
            self._meter[0] += float(loss.detach()) * len(y)
            self._meter[1] += int((logits.detach().argmax(1) == y).sum())
            self._seen[0] += len(y)
            scorer = self.model
        else:
            if self._pruned is None:  # the epoch's first step: its share of Algorithm 5, then prune
                self._search_share()
                from dartboard.spaces.vit import prune_vit

                self._pruned = prune_vit(self.model, self.derive())
            scorer = self._pruned
        scorer.eval()
        with torch.no_grad():
            self._meter[2] += int((scorer(vx).argmax(1) == vy).sum())
        self._seen[1] += len(vy)

    def _search_share(self) -> None:
        if self.dario is None:
            self.model.eval()
            self.dario = DarioSearcher(self.model, self.config)
            self.dario.warm_start()  # Algorithm 5 lines 1-3
        j, n = self.epoch - int(self.options["pretrain_epochs"]), self._search_epochs()
        total = self.config.iterations
        for _ in range(total * (j + 1) // n - total * j // n):
            self.dario.step()

    def end_epoch(self) -> dict[str, float]:
        metrics = {"val_acc": self._meter[2] / max(self._seen[1], 1)}
        if self._seen[0]:
            metrics.update(train_loss=self._meter[0] / self._seen[0], train_acc=self._meter[1] / self._seen[0])
        genotype = self.derive()
        metrics.update(blocks_kept=float(len(genotype.blocks_kept)),
                       heads_kept=float(sum(len(genotype.heads_kept.get(b, range(self.n_heads)))
                                            for b in genotype.blocks_kept)))
        if self.dario is not None and self.dario.history:
            metrics["proxy"] = self.dario.history[-1]
        self.history.append({"epoch": self.epoch, "metrics": dict(metrics), "weights": self._gate_values()})
        self.epoch += 1
        self._pruned, self._meter, self._seen, self._last = None, [0.0, 0, 0], [0, 0], metrics
        return metrics

    def derive(self):
        """The gates genotype now; before Algorithm 5 has run, the whole model (nothing pruned)."""
        if self.dario is not None:
            return self.dario.derive(self.options["model"], {"create_kwargs": dict(self.create_kwargs)})
        from dartboard.spaces.vit import genotype_from_gates

        return genotype_from_gates(self.options["model"], self.n_blocks, self.n_heads, None, None,
                                   self.config.threshold, {"create_kwargs": dict(self.create_kwargs)})

    def pruned_model(self, genotype) -> nn.Module:
        """The physically smaller copy of the (pre-trained) ViT that ``genotype`` keeps."""
        from dartboard.spaces.vit import prune_vit

        return prune_vit(self.model, genotype)

    def _gate_values(self) -> list[list[list[float]]]:
        """Per group (block, head) and row: [gate, 1 - gate], the (keep, prune) weights of the alpha
        pictures; sigmoid(0) = 0.5 before Algorithm 5 has run (its alphas start at 0)."""
        if self.dario is not None:
            gates = [g.detach().float().cpu().reshape(-1) for g in self.dario.gates() if g is not None]
        else:
            gates = [torch.full((len(group.rows),), 0.5) for group in self.alpha_groups()]
        return [[[float(v), 1.0 - float(v)] for v in g] for g in gates]

    def alpha_groups(self) -> list[AlphaGroup]:
        g, nb, nh = self.config.granularity, self.n_blocks, self.n_heads
        keep = ("keep", "prune")
        groups = [AlphaGroup("block", tuple(range(nb)), tuple(keep for _ in range(nb)))] if g != "head" else []
        if g in ("head", "both"):
            rows = tuple((b, h) for b in range(nb) for h in range(nh))
            groups.append(AlphaGroup("head", rows, tuple(keep for _ in rows)))
        return groups

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

    def arch_parameters(self) -> list[torch.Tensor]:
        return [] if self.dario is None else list(self.dario.alpha.values())

    def weight_parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def distribute(self, wrap, reduce_arch_grads) -> None:
        raise ValueError("resources.workers: a DARIO trial runs on one worker (its search reads no data); "
                         "run several trials at once instead (max_concurrent)")

    def add_hook(self, hook: Any) -> None:
        raise ValueError("hooks: DARIO takes no epoch hooks")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        from dartboard.searchers.base import rng_state

        state = {"epoch": self.epoch, "model": self.model.state_dict(), "history": list(self.history),
                 "pretrain_opt": self.pretrain_opt.state_dict(), "last": dict(self._last), "rng": rng_state(),
                 "seed": self.seed}
        if self.dario is not None:
            state["dario"] = self.dario.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from dartboard.searchers.base import set_rng_state

        self.model.load_state_dict(state["model"])
        self.pretrain_opt.load_state_dict(state["pretrain_opt"])
        self.epoch, self.history, self._last = int(state["epoch"]), list(state["history"]), dict(state["last"])
        if "seed" in state:  # the seed the run started with, whatever seeded this process
            self.seed = self.config.seed = int(state["seed"])
        if "dario" in state:
            self.model.eval()
            self.dario = DarioSearcher(self.model, self.config)
            self.dario.load_state_dict(state["dario"])
        set_rng_state(state["rng"])

