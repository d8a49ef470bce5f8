"""Datasets (torch only): ``datasets`` loads digits, CIFAR and image folders from local copies and
splits them for search; the package also holds data files (``tiny81.json``, the tiny81 table)."""
