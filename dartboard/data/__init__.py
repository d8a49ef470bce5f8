"""Datasets (torch only): ``datasets`` loads digits, CIFAR and image folders from local copies and
splits them for search; ``pmsm`` simulates a motor (thesis 6.2) and registers its data as ``pmsm``;
the package also holds data files (``tiny81.json``, the tiny81 table)."""

from dartboard.data import pmsm as _pmsm  # noqa: F401,E402  (registers the dataset 'pmsm')
