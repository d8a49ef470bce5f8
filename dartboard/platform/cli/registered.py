"""A registered version named where a command takes a genotype (``dartboard train NAME@champion``, ``dartboard
distance A@champion B:2``). `train` writes the version's genotype.json, pulled and verified, into the folder the
training writes to, which is then trained as a genotype folder is: only the genotype is taken, the version's
weights (if any) are not the network this training makes."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dartboard.errors import UserInputError

log = logging.getLogger("dartboard")

#: NAME@ALIAS or NAME:VERSION (registered names hold no ``/``), or an MLflow ``models:/`` URI
_REFERENCE = re.compile(r"models:/.+|[^/\\@:]+(@[^/\\@:]+|:\d+)")


def is_registry_reference(text: str) -> bool:
    """Whether ``text`` names a registered version rather than a catalog name or a file or folder that exists."""
    from dartboard.spaces.catalog import GENOTYPES

    return text not in GENOTYPES and not Path(text).exists() and _REFERENCE.fullmatch(text) is not None


@contextmanager
def pulled_genotype(ref: str, uri: str | None, out: str | None) -> Iterator[tuple[str, str | None]]:
    """Pull ``ref`` (verified) and write its genotype.json into ``out`` (default ``runs/NAME-vVERSION``); give that
    folder and the data set the version records (its ``dataset`` tag), the training's default data. A refusal inside
    (a flag, the data) takes back what was written here while nothing else was written into the folder."""
    from dartboard.model_files import GENOTYPE_FILE
    from dartboard.platform.checks import check_writable_dir
    from dartboard.spaces import genotype as gt

    version, text, trained = _pulled(ref, uri)
    genotype = gt.from_dict(json.loads(text))
    dest = Path(out) if out is not None else Path("runs") / f"{version.name}-v{version.version}"
    check_writable_dir(dest, "--out")
    target = dest / GENOTYPE_FILE
    if target.exists() and not gt.holds(target, genotype):
        raise UserInputError(f"--out: {str(dest)!r} holds another {GENOTYPE_FILE} than {version.name} version "
                             f"{version.version}'s; give another --out (nothing was written)")
    made = [p for p in (*reversed(dest.parents), dest) if not p.exists()]
    written = not target.exists()
    before = {p.name for p in dest.iterdir()} if dest.is_dir() else set()
    dest.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    log.info("train: %s version %s's genotype pulled into %s", version.name, version.version, dest)
    if trained is not None:
        log.info("train: %s version %s holds a network of %s trained from it; this training's size is the "
                 "protocol's unless --channels and --layers give one", version.name, version.version, trained)
    try:
        yield str(dest), version.tags.get("dataset") or None
    except UserInputError:
        if written and {p.name for p in dest.iterdir()} - before == {GENOTYPE_FILE}:  # nothing else written since
            target.unlink()
            for folder in reversed(made):  # the folders made for it, deepest first
                folder.rmdir()
        raise


def genotype_of(text: str, uri: str | None):
    """The genotype a command's argument names: a registered version's (pulled and verified), else a catalog name's,
    a file's or a folder's (``resolve``)."""
    from dartboard.spaces import genotype as gt
    from dartboard.spaces.catalog import resolve

    if not is_registry_reference(text):
        return resolve(text)
    return gt.from_dict(json.loads(_pulled(text, uri)[1]))


def _pulled(ref: str, uri: str | None) -> tuple[Any, str, str | None]:
    """The version ``ref`` names, its genotype.json's text and the size of the network it holds, if any (``C=8, 5
    cells`` from its network.json), pulled into a temporary folder (``pull_model`` verifies the files and validates
    the genotype)."""
    from dartboard.model_files import GENOTYPE_FILE, NETWORK_FILE
    from dartboard.platform.tracking.models import pull_model

    with tempfile.TemporaryDirectory(prefix="dartboard-pull-") as tmp:
        folder, version = pull_model(uri, ref, Path(tmp) / "model")
        return version, (folder / GENOTYPE_FILE).read_text(), _network_size(folder / NETWORK_FILE)


def _network_size(path: Path) -> str | None:
    try:
        spec = json.loads(path.read_text())
        return f"C={int(spec['channels'])}, {int(spec['layers'])} cells"
    except (OSError, ValueError, KeyError, TypeError):
        return None
