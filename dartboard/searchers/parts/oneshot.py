"""The parts of the one-shot methods around DARTS (GDAS, SNAS, DrNAS, PC-DARTS, SDARTS, DARTS-,
DARTS-PT), imported once so that their registries know them."""

from dartboard.searchers.parts.mixed_ops import AuxSkip, PartialChannel
from dartboard.searchers.parts.oneshot_regularizers import DirichletAnchor, Resource
from dartboard.searchers.parts.perturbations import AdversarialPerturbation, RandomSmoothing
from dartboard.searchers.parts.projection import PerturbationProjection
from dartboard.searchers.parts.samplers import DirichletSampler, GumbelSoftmax

ONESHOT_PARTS = (GumbelSoftmax, DirichletSampler, PerturbationProjection, RandomSmoothing, AdversarialPerturbation,
                 PartialChannel, AuxSkip, DirichletAnchor, Resource)
