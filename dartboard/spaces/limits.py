"""The sizes a genotype or a final network may ask for, checked before anything is built (torch-free,
so the command line checks them before importing torch).

The largest published cells have 12 edges and 6 intermediate nodes (resnet50) and the deepest cell
genotype 13 cells (xception); the DARTS evaluation networks are C=36 with 20 cells (CIFAR) and C=48
with 14 cells (ImageNet). Far beyond these a typo or a generated file builds for minutes and takes
gigabytes before failing (a cell of thousands of edges: > 300 s and 5 GB in ``dartboard info``).
"""

from __future__ import annotations

from dartboard.errors import UserInputError

MAX_EDGES_PER_CELL = 64
MAX_NODES_PER_CELL = 32  # intermediate nodes
MAX_CELLS = 100
MIN_CHANNELS, MAX_CHANNELS = 2, 1024  # 2: the ImageNet stem halves C


def check_network_size(channels: int, layers: int) -> None:
    """Refuse a final network of impossible or unreasonable size, naming the limit."""
    if not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        raise UserInputError(f"channels: expected an integer in [{MIN_CHANNELS}, {MAX_CHANNELS}], got {channels}")
    if not 1 <= layers <= MAX_CELLS:
        raise UserInputError(f"layers: expected an integer in [1, {MAX_CELLS}], got {layers}")
