"""Every published method as data: a preset is a few lines of parts and hyperparameters for
the one engine (:mod:`dartboard.searchers.compose`); nothing is copied per variant.

Maile et al.'s Table 1 rows are compositions of the fragments ``cs10``, ``fimt``, ``crb``,
``pr`` and ``admm``: ``darts+pr+fimt`` is ``merge(pr, fimt)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CRB_INIT_SCALE = 1e-4  # Maile et al. (ALGORITHMS.md): CRB alpha init 1/|O| + 1e-4 * randn
W01_DDARTS = 7.0  # thesis 4.2.2 (4.2.1 says 8; the analysis of Fig 4.4 picks 7)
DARTOPTI_CHANNELS = 32  # thesis 4.2.1: 32 initial channels while searching from a handcrafted network
DARTOPTI_WARMUP = 5  # thesis 4.1.4 (iii): 5 warm-up epochs train the weights only
COLORNAS_THRESHOLD = 0.7  # thesis A.3.1: the two best incoming ops per node, selected with a threshold of 0.7
COLORNAS_INPUTS_PER_NODE = 2


@dataclass(frozen=True)
class Preset:
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    # Short names for part options, e.g. D-DARTS's w01 -> regularizers.zero_one.weight.
    aliases: dict[str, str] = field(default_factory=dict)
    # The scaled-down profile on small data (digits); None = the platform's default profile.
    small_data_defaults: dict[str, Any] | None = None
    # The data a search runs on when the user names none (an application's own data); None: digits.
    dataset: str | None = None


def merge(*fragments: dict[str, Any]) -> dict[str, Any]:
    """Compose option fragments: ``regularizers``/``hooks`` lists concatenate, other keys
    must agree (a conflict is an error naming the key)."""
    out: dict[str, Any] = {}
    for frag in fragments:
        for key, value in frag.items():
            if key in ("regularizers", "hooks"):
                out[key] = list(out.get(key, [])) + list(value)
            elif key in out and out[key] != value:
                raise ValueError(f"preset fragments disagree on {key!r}: {out[key]!r} vs {value!r}")
            else:
                out[key] = value
    return out


# Fragments (data). Sources: ALGORITHMS.md and the papers named in each comment.
FRAGMENTS: dict[str, dict[str, Any]] = {
    # Maile et al. 4: CS10, one alpha step per 10 weight steps.
    "cs10": {"schedule": {"name": "constant", "k": 10}},
    # Maile et al. 3.2 / 4.1: FIMT, expected ratio 10, EWMA 0.2.
    "fimt": {"schedule": {"name": "fimt", "k": 10}},
    # Maile et al. 3.1 / 4.1: clipped ReLU (with its masking), node BN, no none, init 1/|O| + 1e-4 randn, arch wd off.
    "crb": {"activation": "crb", "node_bn": True, "space": "darts-none",
            "alpha_init": {"name": "uniform", "scale": CRB_INIT_SCALE}, "arch_weight_decay": 0.0},
    # Maile et al. 3.3 / 4.1: proximity regularization, rho_p = 0.1.
    "pr": {"regularizers": [{"name": "proximity"}]},
    # Maile et al. 3.4 / 4.1: ADMM, rho_a = 0.1, lambda_u = 0.8, period 10.
    "admm": {"regularizers": [{"name": "admm"}]},
}

# D-DARTS (thesis ch. 4, Algorithm 1): one group, optimizer and cosine-annealed lr per cell, sigmoid mixing,
# L_T^i = L_CE + w01 L01^i + wAB L_AB^i, threshold parse. Reference optimizers: Adam 3e-3, (0.9, 0.999), wd 1e-3.
_DDARTS_LF = {
    "space": "darts-none", "grouping": "per_cell", "activation": "sigmoid",
    "alpha_init": {"name": "constant", "value": 0.0},
    "arch_optimizer": {"name": "adam", "per_group": True, "lr_schedule": "cosine", "lr_min": 0.0},
    "arch_lr": 3e-3, "arch_betas": (0.9, 0.999), "arch_weight_decay": 1e-3,
    "discretizer": {"name": "sparse"},  # thesis Algorithm 1: <= 1 op per edge above sigma_t = 0.85
    "regularizers": [{"name": "zero_one", "weight": W01_DDARTS, "per_group": True}],
}
_DDARTS = merge(_DDARTS_LF, {"regularizers": [{"name": "ablation"}]})
_LF_ALIASES = {"w01": "regularizers.zero_one.weight", "arch_lr_min": "arch_optimizer.lr_min",
               "sigma_threshold": "discretizer.sigma_threshold"}
_DDARTS_ALIASES = {**_LF_ALIASES, "w_ab": "regularizers.ablation.weight", "ablation_grad": "regularizers.ablation.grad",
                   "deactivation": "regularizers.ablation.deactivation", "seed": "regularizers.ablation.seed"}
# DARTOpti (thesis 4.1.4, 4.2.4): D-DARTS in S_o from a handcrafted start, alphas shared per cell type,
# encoded init, 5 warm-up epochs, edge parse, distance-based early stop.
_DARTOPTI = {**_DDARTS, "space": "s_o", "start": "resnet18", "C": DARTOPTI_CHANNELS,
             "warmup_epochs": DARTOPTI_WARMUP, "grouping": "per_cell_type", "alpha_init": {"name": "encoded"},
             "discretizer": {"name": "edge"}, "hooks": [{"name": "distance_stop"}]}
_DARTOPTI_ALIASES = {**_DDARTS_ALIASES, "alpha_encoded": "alpha_init.value", "early_stop": "hooks.distance_stop.stop",
                     "stop_tolerance": "hooks.distance_stop.tolerance",
                     "stop_patience": "hooks.distance_stop.patience",
                     "stop_min_epoch": "hooks.distance_stop.min_epoch"}

# NASiam (thesis ch. 5, Algorithm 4; ALGORITHMS.md): SGD lr 0.06, momentum 0.9, wd 5e-4, cosine to 0, 100 epochs;
# alphas AdamW lr 1e-3, wd 1e-3 (reference); one alpha group per head; argmax per layer (the DARTS parse of a
# chain); whole-pass alternation per epoch (Algorithm 4; schedule=alternate: per step, as the reference).
_NASIAM = {"space": "nasiam-mlp", "grouping": "per_cell_type", "schedule": "per_epoch",
           "arch_optimizer": "adamw", "arch_lr": 1e-3, "arch_weight_decay": 1e-3, "arch_betas": (0.9, 0.999),
           "w_lr": 0.06, "w_lr_min": 0.0, "w_momentum": 0.9, "w_weight_decay": 5e-4, "epochs": 100,
           "projector_layers": 6}
NASIAM_DATASET = "digits-views"  # two augmented views of every digit (digits-views-noaug: the ablation)
NASIAM_SMALL = {"C": 16, "epochs": 10}  # digits on a CPU: a 64-dimensional head, minutes

PRESETS: dict[str, Preset] = {
    "darts": Preset("DARTS (Liu et al.): softmax mixing, bilevel; order 1 or 2"),
    "darts-2nd": Preset("DARTS, second order (unrolled)", {"order": 2}),
    "darts-variant": Preset("DARTS with any combination of parts from the options"),
    "fairdarts": Preset("FairDARTS (thesis 3.2.1): sigmoid + zero-one loss (w01 = 10), no none", {
        "activation": "sigmoid", "space": "darts-none", "alpha_init": {"name": "constant", "value": 0.0},
        "regularizers": [{"name": "zero_one"}],
        # FairDARTS reference optimizers (ALGORITHMS.md FairDARTS).
        "arch_lr": 3e-3, "arch_betas": (0.9, 0.999), "arch_weight_decay": 1e-3, "w_lr": 0.005},
        {"w01": "regularizers.zero_one.weight"}),
    "sparse-darts": Preset("Sparse DARTS (Ito): capped-simplex alphas, projected gradient, l1", {
        "activation": "capped_simplex", "alpha_init": "uniform", "arch_weight_decay": 0.0,
        "regularizers": [{"name": "l1"}]}),
    "beta-darts": Preset("beta-DARTS (Ye et al. 2022): beta-decay regularization, ramp 50 * epoch / 100", {
        "space": "darts-none", "regularizers": [{"name": "beta_decay"}]}),
    "rdarts-es": Preset("R-DARTS DARTS-ES: Hessian eigenvalue early stopping", {
        "hooks": [{"name": "rdarts", "mode": "es"}]}),
    "rdarts-ada": Preset("R-DARTS DARTS-ADA: rollback and weight decay x10 on rising curvature", {
        "hooks": [{"name": "rdarts", "mode": "ada"}]}),
    "ddarts": Preset("D-DARTS (thesis ch. 4): per-cell alphas and optimizers, L_T = L_CE + w01 L01 + wAB L_AB "
                     "(ablation loss)", _DDARTS, _DDARTS_ALIASES),
    "ddarts-lf": Preset("D-DARTS with the FairDARTS loss per cell (L_F = L_CE + w01 L01^i, no ablation)",
                        _DDARTS_LF, _LF_ALIASES),
    "dartopti": Preset("DARTOpti (thesis 4.1.4): D-DARTS in S_o started from a handcrafted network "
                       "(start=resnet18|resnet50|xception)", _DARTOPTI, _DARTOPTI_ALIASES,
                       small_data_defaults={"C": 8, "epochs": 10}),  # the cell count comes from the start
    "nasiam-simsiam": Preset("NASiam (thesis ch. 5) with SimSiam: searched projector (<= 6) and predictor (<= 4) "
                             "heads, negative cosine with stop-gradient", {**_NASIAM, "objective": "simsiam",
                                                                           "predictor_layers": 4},
                             small_data_defaults=NASIAM_SMALL, dataset=NASIAM_DATASET),
    "nasiam-simclr": Preset("NASiam with SimCLR: searched projector (<= 6 layers), NT-Xent",
                            {**_NASIAM, "objective": "simclr", "predictor_layers": 0},
                            {"temperature": "objective.temperature"}, NASIAM_SMALL, NASIAM_DATASET),
    "nasiam-moco": Preset("NASiam with MoCo v2: searched projector (<= 6 layers), momentum key encoder, queue",
                          {**_NASIAM, "objective": "moco", "predictor_layers": 0},
                          {"temperature": "objective.temperature", "queue_size": "objective.queue_size",
                           "key_momentum": "objective.momentum"},
                          # the queue holds a multiple of the 2 x 64 keys of a default batch, under the 718 images
                          {**NASIAM_SMALL, "objective.queue_size": 512}, NASIAM_DATASET),
}
# ColorNAS (thesis appendix A): a beta-DARTS supernet per channel of a colour model (space colornas, its own
# normal/reduce alphas per channel: per_cell_type), pooled features -> MLP meta-learner; threshold parse.
_COLORNAS = {**PRESETS["beta-darts"].options, "space": "colornas", "grouping": "per_cell_type",
             "discretizer": {"name": "threshold", "sigma_threshold": COLORNAS_THRESHOLD,
                             "max_inputs_per_node": COLORNAS_INPUTS_PER_NODE}}
_COLORNAS_ALIASES = {"colour_model": "space_options.colour_model", "yellow": "space_options.yellow",
                     "meta_hidden": "space_options.meta_hidden", "sigma_threshold": "discretizer.sigma_threshold"}
for _model, _what in (("rb", "RB (Algorithm 6: green removed)"), ("rgb", "RGB"),
                      ("rgby", "RGBY (Algorithm 7; yellow=printed|min)")):
    PRESETS[f"colornas-{_model}"] = Preset(
        f"ColorNAS {_what}: a beta-DARTS supernet per channel + MLP meta-learner (thesis appendix A)",
        {**_COLORNAS, "space_options": {"colour_model": _model}}, _COLORNAS_ALIASES,
        small_data_defaults={"C": 4, "layers": 5, "epochs": 10}, dataset="colour-digits")
# Maile et al. Table 1 rows: compositions of fragments.
for _row in ("cs10", "fimt", "crb", "fimt+crb", "pr", "pr+fimt", "pr+fimt+crb", "admm", "admm+fimt",
             "admm+fimt+crb"):
    PRESETS[f"darts+{_row}"] = Preset(f"Maile et al. Table 1: DARTS+{_row.upper()}",
                                      merge(*(FRAGMENTS[f] for f in _row.split("+"))))

# PMSM flux models (thesis 6.2): two steps in sequence (searching both at once diverged in the thesis), on the
# simulator's data ('pmsm'), criterion C (Eqs 6.15-6.16, physically consistent form), argmax per layer.
# Adam for the weights (criterion C divides by det J: SGD at any lr that learns also blows up), warm-up epochs
# and arch betas (0.5, 0.9) so that the huge first gradients (a random model's J is near singular) do not
# freeze Adam's alpha steps. Step 1's placeholder activation is tanh: with the thesis's ReLU (space pmsm-depth)
# the model's Jacobian is piecewise constant and the supernet never fits (README, PMSM).
_PMSM = {"grouping": "per_cell_type", "objective": {"name": "flux_criterion"}, "discretizer": "argmax",
         "hooks": [{"name": "finite_guard"}], "C": 16, "w_optimizer": "adam", "w_lr": 0.01, "w_lr_min": 1e-4,
         "w_weight_decay": 0.0, "arch_lr": 0.01, "arch_betas": (0.5, 0.9), "arch_weight_decay": 0.0}
_PMSM_ALIASES = {"form": "objective.form", "det_floor": "objective.det_floor"}
PRESETS["pmsm-depth"] = Preset(
    "PMSM step 1 (thesis 6.2.2): depth of the flux MLP, layers = N mixed {Linear+tanh, Identity} layers "
    "(space=pmsm-depth: the thesis's ReLU placeholder)",
    {**_PMSM, "space": "pmsm-depth-tanh", "layers": 4, "epochs": 15, "warmup_epochs": 5}, _PMSM_ALIASES,
    small_data_defaults={}, dataset="pmsm")
PRESETS["pmsm-activation"] = Preset(
    "PMSM step 2 (thesis 6.2.2): one global activation B(U1, U2) after each of layers hidden layers",
    {**_PMSM, "space": "pmsm-activation", "layers": 3, "epochs": 20, "warmup_epochs": 3, "w_lr": 3e-3,
     "arch_lr": 3e-3}, _PMSM_ALIASES,
    small_data_defaults={}, dataset="pmsm")
# The one-shot methods around DARTS (issue 19): parts in dartboard/searchers/parts/{samplers, mixed_ops,
# perturbations, projection, oneshot_regularizers}.py, each paper's numbers named there.
PC_DARTS_WARMUP = 15  # PC-DARTS 4.1: the first 15 of the 50 epochs train the weights only
ARCH_LR_PC_DARTS = 6e-4  # PC-DARTS 4.1 (and DrNAS's script, built on it): Adam lr 6e-4, wd 1e-3
_SMALL = {"C": 8, "layers": 5, "epochs": 10}  # the digits profile (platform/config.py), PC-DARTS's warm-up scaled
PRESETS.update({
    "gdas": Preset("GDAS (Dong & Yang 2019): hard Gumbel-softmax sample per edge (tau 10 -> 0.1), only the "
                   "sampled op computed", {"activation": {"name": "gumbel", "hard": True}},
                   {"tau_max": "activation.tau_max", "tau_min": "activation.tau_min"}),
    "snas": Preset("SNAS (Xie et al. 2019): relaxed Gumbel-softmax (tau 1 -> 0.03), single-level update, "
                   "optional resource penalty (resource_weight)", {
                       "activation": {"name": "gumbel", "hard": False, "tau_max": 1.0, "tau_min": 0.03},
                       "single_level": True, "regularizers": [{"name": "resource", "weight": 0.0}]},
                   {"tau_max": "activation.tau_max", "tau_min": "activation.tau_min",
                    "resource_weight": "regularizers.resource.weight"}),
    "drnas": Preset("DrNAS (Chen et al. 2021): Dirichlet mixing weights (elu(alpha) + 1), pathwise gradient, "
                    "KL to Dir(1) (lambda 1e-3), derivation from E[w]", {
                        "activation": "dirichlet", "regularizers": [{"name": "dirichlet_kl"}],
                        "arch_lr": ARCH_LR_PC_DARTS},
                    {"kl_weight": "regularizers.dirichlet_kl.weight", "kl_kind": "regularizers.dirichlet_kl.kind"}),
    "pc-darts": Preset("PC-DARTS (Xu et al. 2020): 1/K partial channels (K = 4) with channel shuffle, edge "
                       "normalisation betas, 15 warm-up epochs", {
                           "mixed_op": {"name": "partial_channel"}, "warmup_epochs": PC_DARTS_WARMUP,
                           "arch_lr": ARCH_LR_PC_DARTS},
                       {"pc_k": "mixed_op.k", "edge_norm": "mixed_op.edge_norm"},
                       small_data_defaults={**_SMALL, "warmup_epochs": 3}),
    "sdarts-rs": Preset("SDARTS-RS (Chen & Hsieh 2020): weight step on softmax(alpha) + U[-eps, eps], eps "
                        "0.03 -> 0.3", {"perturbation": {"name": "random"}},
                        {"epsilon_max": "perturbation.epsilon_max"}),
    "sdarts-adv": Preset("SDARTS-ADV (Chen & Hsieh 2020): weight step on 7-step PGD-perturbed weights, eps "
                         "0.03 -> 0.3", {"perturbation": {"name": "adversarial"}},
                         {"epsilon_max": "perturbation.epsilon_max", "pgd_steps": "perturbation.steps"}),
    "darts-minus": Preset("DARTS- (Chu et al. 2021): auxiliary skip on every edge, coefficient 1 -> 0, "
                          "ignored at derivation", {"mixed_op": {"name": "aux_skip"}},
                          {"aux_decay": "mixed_op.decay"}),
    "darts-pt": Preset("DARTS-PT (Wang et al. 2021): DARTS supernet training, then perturbation-based "
                       "projection (op per edge, then topology) with fine-tuning between decisions",
                       {"activation": {"name": "darts_pt"}},
                       {"pt_start_epoch": "activation.start_epoch", "pt_tune_steps": "activation.tune_steps"}),
})


def space_of(searcher: str, options: dict[str, Any] | None = None, default: str = "darts") -> str:
    """The space a search of ``searcher`` runs in: the user's ``space`` option, else its preset's,
    else DARTS's (torch-free: for tags and reports)."""
    if options and options.get("space"):
        return str(options["space"])
    preset = PRESETS.get(searcher)
    return str(preset.options.get("space", default)) if preset is not None else default

