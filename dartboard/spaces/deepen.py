"""Deepening a searched per-cell architecture (thesis Algorithm 2, D-DARTS 4.1.3).

The reduction cells of an ``n_searched``-cell search sit at ``n_searched // 3`` and
``2 * n_searched // 3``; a ``n_target``-cell network keeps them at ``n_target // 3`` and
``2 * n_target // 3`` and fills each interval between reductions by cycling through the
searched normal cells of the matching interval.

Implemented as the pseudo-code is written: ``c = (i mod (m2 - 1 - m)) + m + 1`` in the
middle interval, not the reference code's ``i % len // 3`` (which Python reads as
``(i % len) // 3``; ALGORITHMS.md, D-DARTS).
"""

from __future__ import annotations


def deepen(n_searched: int, n_target: int) -> list[int]:
    """Thesis Algorithm 2: for every cell ``i`` of the target network, the index of the
    searched cell it copies. ``n_target <= n_searched`` keeps cells ``0 .. n_target-1``."""
    for name, value in (("n_searched", n_searched), ("n_target", n_target)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive number of {'searched ' * (name == 'n_searched')}cells, "
                             f"got {value!r}")
    if n_target <= n_searched:
        return list(range(n_target))  # Algorithm 2, line 18: c <- i
    m = n_searched // 3  # line 2: the first searched reduction cell
    m2 = 2 * n_searched // 3  # line 3: the second searched reduction cell
    # Each interval between reductions must hold at least one searched normal cell.
    widths = {"before the first reduction": m, "between the reductions": m2 - 1 - m,
              "after the second reduction": n_searched - 1 - m2}
    for where, width in widths.items():
        if width < 1:
            raise ValueError(
                f"n_searched: {n_searched} searched cells leave no normal cell {where} (reductions at {m} and "
                f"{m2}); Algorithm 2 needs at least one normal cell in each interval, e.g. n_searched >= 5")
    return [_source_cell(i, n_target, n_searched, m, m2) for i in range(n_target)]  # line 4, i in [0, n)


def _source_cell(i: int, n_target: int, n_searched: int, m: int, m2: int) -> int:
    first, second = n_target // 3, 2 * n_target // 3
    if i < first:
        return i % m  # line 7
    if i == first:
        return m  # line 9
    if i < second:
        return i % (m2 - 1 - m) + m + 1  # line 11
    if i == second:
        return m2  # line 13
    return i % (n_searched - 1 - m2) + m2 + 1  # line 15
