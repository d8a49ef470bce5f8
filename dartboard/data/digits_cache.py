"""scikit-learn's bundled digits and dartboard's fixed train/test split, cached on this machine.

Every Ray Train worker, trial actor and command that trains on digits is a fresh process; importing
scikit-learn to read 1,797 8x8 images costs it about 1.4 CPU seconds (more than the rest of the data
path). The first load on a machine reads them through scikit-learn as always and writes the images, the
labels and the split's indices to ``$DARTBOARD_CACHE`` (default ``~/.cache/dartboard``), keyed by the
scikit-learn version and the split's seed and fraction; later loads read that file (numpy only). Nothing
is downloaded either way. A cache that cannot be written or read (read-only home, a damaged file) is
never an error: the data then comes from scikit-learn, and a damaged file is replaced.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger("dartboard")
CACHE_ENV = "DARTBOARD_CACHE"
FIELDS = ("images", "target", "train_idx", "test_idx")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dartboard")


def cache_file(seed: int, test_fraction: float) -> Path:
    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return cache_dir() / f"digits-sklearn{version}-seed{seed}-test{test_fraction:g}.npz"


def from_sklearn(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """The images (uint8, 0..16), labels and the stratified split's indices, through scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    target = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=test_fraction, random_state=seed,
                                           stratify=target)
    return {"images": digits.images.astype(np.uint8), "target": target, "train_idx": train_idx,
            "test_idx": test_idx}


def digits_split(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """``from_sklearn(seed, test_fraction)``, from this machine's cache when it holds it."""
    path = cache_file(seed, test_fraction)
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in FIELDS}
        if len(arrays["train_idx"]) + len(arrays["test_idx"]) == len(arrays["target"]) == len(arrays["images"]):
            return arrays
        log.warning("digits cache %s is inconsistent: reading the digits through scikit-learn", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        log.warning("digits cache %s unreadable (%s): reading the digits through scikit-learn", path, err)
    arrays = from_sklearn(seed, test_fraction)
    _write(path, arrays)
    return arrays


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically (a temporary file renamed over it): concurrent workers never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digits-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        log.debug("digits cache %s not written: %s", path, err)
