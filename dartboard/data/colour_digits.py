"""``colour-digits``: an RGB data set made deterministically from scikit-learn's bundled digits, in
which colour carries information (for ColorNAS, thesis appendix A, at laptop scale).

How: every digit of class ``c`` is drawn in the ink ``INKS[c % 4]`` (red, green, blue, yellow) on
a background of uniform noise in every channel (``NOISE``, seeded). The label is the digit, so the
ink narrows a sample to 2 or 3 classes and the shape decides among them, and every channel holds
part of the answer:

- R shows the red and yellow classes (0, 4, 8; 3, 7), G the green and yellow ones (1, 5, 9; 3, 7),
  B the blue ones (2, 6);
- RB (Algorithm 6) loses the green classes 1, 5, 9 (pure noise without G);
- RGBY as printed (Y = R' + G' = |R - G|) loses the yellow classes 3, 7: R = G there, so R', G'
  and Y hold only the noise difference; RGBY with Y = min(R, G) keeps them in Y.

Same 1,797 images and the same fixed train/test split as ``digits``; 3 x 8 x 8, values in [0, 1]
(not normalised, so that the colour models see raw intensities). Torch-free (numpy only).
"""

from __future__ import annotations

import numpy as np

COLOUR_DIGITS = "colour-digits"
COLOUR_DIGITS_SEED = 0  # the background noise; fixed, so the data set is one data set
NOISE = 0.2  # background noise amplitude per channel (uniform in [0, NOISE])
INK = 0.8  # ink intensity at a full digit pixel (INK + NOISE <= 1)
#: Ink of class c: INKS[c % 4] as (R, G, B).
INKS: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0))
INK_NAMES = ("red", "green", "blue", "yellow")


def ink_of(label: int) -> tuple[float, float, float]:
    return INKS[int(label) % len(INKS)]


def colourise(images: np.ndarray, labels: np.ndarray, seed: int = COLOUR_DIGITS_SEED) -> np.ndarray:
    """``images`` [N, H, W] in [0, 1] -> [N, 3, H, W] in [0, 1]: INK * ink(label) * digit + noise."""
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"images: expected [N, H, W] with one label each, got {images.shape} and {len(labels)} labels")
    inks = np.asarray([ink_of(c) for c in labels], dtype=np.float32)  # [N, 3]
    noise = np.random.default_rng(seed).uniform(0.0, NOISE, size=(len(images), 3, *images.shape[1:]))
    out = INK * inks[:, :, None, None] * images[:, None, :, :].astype(np.float32) + noise.astype(np.float32)
    return out.astype(np.float32)
