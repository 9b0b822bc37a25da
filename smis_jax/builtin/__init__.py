"""The built-in domains (``shapes``, ``shapes-scribbles``): their shots, test masks and shipped generator.

Nothing here reads a user's files: the few shots and the held-out masks are drawn from the procedural generator
(``smis_jax.builtin.shapes``) with fixed seeds, and the generator is the one smis-jax trained and ships in
``smis_jax/assets/shapes-gan`` (its ``provenance.json`` says how). Shot images are at the scenes' 64 px (the
generator's size); masks are at the pipeline's 256 (nearest x4, exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from smis_jax.builtin import shapes
from smis_jax.config import Domain
from smis_jax.errors import ConfigError, MissingFileError

__all__ = ["ASSETS", "GENERATOR", "N_TEST_MASKS", "shot_names", "shots", "test_masks", "generator_path",
           "annotate"]

ASSETS = Path(__file__).parents[1] / "assets"
GENERATOR = ASSETS / "shapes-gan"
N_TEST_MASKS = 32
MASK_SIZE = 256


def generator_path() -> Path:
    """The shipped generator; a clear error when the package was installed without it."""
    if not (GENERATOR / "config.json").is_file():
        raise MissingFileError(f"{GENERATOR}: the built-in generator is missing from this installation; pass "
                                f"--stylegan, or train one with python -m train.stylegan2")
    return GENERATOR


def annotate(domain: Domain, mask64: np.ndarray, index: int) -> np.ndarray:
    """A 64 px scene mask as the domain annotates it, at 256: the mask itself (dense) or scribbles (sparse)."""
    if domain.mode == "sparse":
        mask64 = shapes.scribbles(mask64, index)
    return shapes.upsample_mask(mask64, MASK_SIZE // mask64.shape[-1])


def shot_names(count: int) -> tuple[str, ...]:
    return tuple(f"scene{i:02d}" for i in range(count))


def shots(domain: Domain, which: int | Sequence[str]):
    """The domain's annotated shots: (names, images (K, 64, 64, 3) in [-1, 1], labels (K, 256, 256) uint8).

    ``which``: the first K scenes of the shot stream, or names ``sceneNN``."""
    if isinstance(which, int):
        names = shot_names(which)
    else:
        names = tuple(which)
        bad = [n for n in names if not (n.startswith("scene") and n[5:].isdigit())]
        if bad:
            raise ConfigError(f"built-in shots are named scene00, scene01, ...; got {bad[0]!r}")
    index = [int(n[5:]) for n in names]
    scenes = [shapes.render(shapes.SHOT_SEED, i) for i in index]
    images = np.stack([s.image for s in scenes])
    labels = np.stack([annotate(domain, s.mask, i) for s, i in zip(scenes, index)])
    return names, images, labels


def test_masks(domain: Domain, count: int = N_TEST_MASKS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Held-out masks: (names, labels (N, 256, 256) as the domain annotates them, dense truth (N, 64, 64))."""
    scenes = shapes.render_batch(shapes.TEST_SEED, 0, count)
    labels = np.stack([annotate(domain, m, 10_000 + i) for i, m in enumerate(scenes.mask)])
    return [f"test{i:03d}" for i in range(count)], labels, scenes.mask
