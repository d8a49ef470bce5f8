"""A small image folder as a user keeps one (``train/`` and ``test/``, one subfolder of PNGs per class), for the tests
that run commands on a user's own images."""

from __future__ import annotations

from pathlib import Path


def write_image_folder(root: Path, classes: tuple[str, ...] = ("red", "blue"), per_class: int = 4,
                       size: int = 8) -> Path:
    """``root/{train,test}/CLASS/i.png``: RGB images of one colour each, the class in the colour's hue (class k's
    red and blue channels), the image's index in its green channel, so that every image differs. Returns ``root``."""
    from PIL import Image

    for split in ("train", "test"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            share = k / max(1, len(classes) - 1)  # 0 for the first class, 1 for the last
            red, blue = round(200 * (1 - share)), round(200 * share)
            for i in range(per_class):
                Image.new("RGB", (size, size), (red, (20 * i) % 256, blue)).save(folder / f"{i}.png")
    return root
