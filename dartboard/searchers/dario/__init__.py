"""DARIO (thesis ch. 6, Algorithm 5): data-agnostic pruning of Vision Transformers, a single-level
search over gates with zero-cost proxies as the objective. ``search``: the searcher and its
constants; ``proxies``: the zero-cost proxies."""

from dartboard.searchers.dario.search import (  # noqa: F401  (the package's public names)
    GATE_GRADIENTS,
    ITERATIONS,
    MODEL_LR,
    SEARCH_LR,
    THRESHOLD,
    WARMUP_MEAN,
    WARMUP_SAMPLES,
    DarioConfig,
    DarioSearcher,
    prior_mean_for_keep_probability,
)
