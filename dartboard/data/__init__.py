"""Datasets (torch only): ``catalog`` names them (no torch: what a study checks before loading any);
``datasets`` loads digits, CIFAR and image folders from local copies and splits them for search; ``pmsm``
simulates a motor (thesis 6.2), registered as ``pmsm``; the package also holds data files (``tiny81.json``,
the tiny81 table)."""
