"""The built-in procedural domain: landscape scenes with exact masks, an oracle segmenter and scribbles.

Every scene is drawn from a seed (``render(seed, index)``), so the data a GAN trains on, the few shots and the
held-out test masks are all reproducible without a single file. A scene is a landscape (classes in
``CLASS_NAMES``): sky above a tilted horizon, grass below, a sun, 0-3 mountains in front of the sky and sun, an
optional lake, and 0-4 trees and 0-2 houses on the grass drawn back to front. Layout varies (positions, sizes,
counts, occlusion order); appearance varies within each class (a per-image colour shift, a linear lighting
gradient and a smooth sinusoidal texture), so a mask does not determine its image.

Colour separability is the construction: every pixel of class ``c`` lies within ``MAX_DEVIATION`` of
``BASE_COLORS[c]`` in each RGB channel (before quantisation), and any two base colours differ by more than
``2 * MAX_DEVIATION`` in some channel. The nearest base colour (L-infinity) therefore recovers a clean scene's mask
exactly: that is the oracle (:func:`segment`) that judges generated images, as the paper's pretrained
segmentation networks judge real ones. Its confidence on an image is the share of pixels within
``ORACLE_TOLERANCE`` of their nearest base colour.

Images are float32 in [-1, 1], NHWC; masks are uint8 class ids. ``SIZE`` (64) is the resolution scenes are drawn
at and the GAN's output size; the few-shot pipeline reads masks at 256 (nearest x4, exact).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CLASS_NAMES", "BASE_COLORS", "MAX_DEVIATION", "ORACLE_TOLERANCE", "SIZE", "Scene", "render", "render_batch",
    "segment", "oracle_confidence", "class_frequencies", "scribbles", "upsample_mask", "downsample_mask",
    "SHOT_SEED", "TEST_SEED", "TRAIN_SEED", "OBJECT_CLASSES", "regions", "ShapeClassifier", "shape_classifier",
    "colour_fidelity",
]

SIZE = 64
CLASS_NAMES = ("sky", "mountain", "sun", "grass", "water", "tree", "house")
SKY, MOUNTAIN, SUN, GRASS, WATER, TREE, HOUSE = range(7)
BASE_COLORS = np.array([
    [100, 170, 240],  # sky
    [140, 100, 150],  # mountain
    [250, 225, 60],   # sun
    [100, 180, 50],   # grass
    [20, 60, 170],    # water
    [20, 80, 15],     # tree
    [210, 50, 40],    # house
], np.float32)
# Per-image shift + lighting gradient + texture never exceed these amplitudes (0..255 units).
JITTER, GRADIENT, TEXTURE = 14.0, 12.0, 10.0
MAX_DEVIATION = JITTER + GRADIENT + TEXTURE  # 36
ORACLE_TOLERANCE = MAX_DEVIATION + 4.0  # a generated pixel this close to a base colour counts as confident

# Fixed seeds of the built-in domain's splits (GAN data, few shots, held-out test masks): disjoint streams.
TRAIN_SEED, SHOT_SEED, TEST_SEED = 0, 1, 2


def _min_separation() -> float:
    d = np.abs(BASE_COLORS[:, None] - BASE_COLORS[None]).max(-1)
    return float(d[~np.eye(len(d), dtype=bool)].min())


assert _min_separation() > 2 * MAX_DEVIATION, "base colours must be separable"


class Scene(NamedTuple):
    image: np.ndarray  # (H, W, 3) float32 in [-1, 1]
    mask: np.ndarray  # (H, W) uint8 class ids


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x5CE7E])


def _layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """The mask of one scene, (size, size) uint8, painted back to front."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size  # pixel centres in (0, 1)
    mask = np.full((size, size), SKY, np.uint8)
    horizon_y = rng.uniform(0.35, 0.62)
    slope = rng.uniform(-0.15, 0.15)
    horizon = horizon_y + slope * (x - 0.5)  # (H, W): the horizon's height at each column
    if rng.random() < 0.85:  # the sun, behind the mountains
        r = rng.uniform(0.06, 0.12)
        cx, cy = rng.uniform(0.08, 0.92), rng.uniform(0.06, max(0.07, horizon_y - 0.12))
        mask[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = SUN
    for _ in range(rng.integers(0, 4)):  # mountains standing on the horizon
        peak_x, half = rng.uniform(0.0, 1.0), rng.uniform(0.15, 0.4)
        height = rng.uniform(0.1, 0.3)
        top = horizon - height * np.clip(1 - np.abs(x - peak_x) / half, 0, 1)
        mask[(y >= top) & (y < horizon) & (np.abs(x - peak_x) < half)] = MOUNTAIN
    mask[y >= horizon] = GRASS
    if rng.random() < 0.6:  # a lake
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(horizon_y + 0.12, 0.88)
        rx, ry = rng.uniform(0.12, 0.3), rng.uniform(0.05, 0.1)
        mask[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1] = WATER
    objects = []
    for _ in range(rng.integers(0, 5)):
        objects.append((TREE, rng.uniform(0.0, 1.0), rng.uniform(horizon_y + 0.05, 0.98)))
    for _ in range(rng.integers(0, 3)):
        objects.append((HOUSE, rng.uniform(0.05, 0.95), rng.uniform(horizon_y + 0.08, 0.98)))
    for kind, ox, oy in sorted(objects, key=lambda o: o[2]):  # far (high) objects first
        scale = 0.6 + (oy - horizon_y)  # nearer objects are larger
        if kind == TREE:
            r = rng.uniform(0.06, 0.1) * scale
            trunk_h = rng.uniform(0.04, 0.07) * scale
            trunk = (np.abs(x - ox) < 0.02 * scale) & (y <= oy) & (y > oy - trunk_h - r)
            crown = (x - ox) ** 2 + ((y - (oy - trunk_h - r)) / 1.2) ** 2 < r * r
            mask[trunk | crown] = TREE
        else:
            w, h = rng.uniform(0.09, 0.15) * scale, rng.uniform(0.07, 0.12) * scale
            body = (np.abs(x - ox) < w) & (y <= oy) & (y > oy - h)
            roof_h = rng.uniform(0.05, 0.09) * scale
            t = (oy - h - y) / roof_h  # 0 at the eaves, 1 at the ridge
            roof = (t >= 0) & (t < 1) & (np.abs(x - ox) < (w + 0.02) * (1 - t))
            mask[body | roof] = HOUSE
    return mask


def _appearance(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Colours for a mask: per class a shifted base colour, a lighting gradient and a smooth texture."""
    size = mask.shape[0]
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1  # (-1, 1)
    light = rng.uniform(-1, 1, 2)
    light /= max(np.abs(light).sum(), 1e-6)  # |lx*x + ly*y| <= 1
    image = np.zeros((size, size, 3), np.float32)
    for c in np.unique(mask):
        colour = BASE_COLORS[c] + rng.uniform(-JITTER, JITTER, 3)
        grad = rng.uniform(-GRADIENT, GRADIENT) * (light[0] * x + light[1] * y)
        if c == SKY:  # the sky brightens towards the horizon
            grad = GRADIENT * y * rng.uniform(0.3, 1.0)
        freq, phase = rng.uniform(2, 9, 2), rng.uniform(0, 2 * np.pi, 2)
        texture = TEXTURE * 0.5 * (np.sin(freq[0] * np.pi * x + phase[0]) + np.sin(freq[1] * np.pi * y + phase[1]))
        tint = rng.uniform(0.5, 1.0, 3)  # texture strength per channel
        sel = mask == c
        image[sel] = colour + (grad[sel, None] + texture[sel, None] * tint)
    return np.clip(np.round(image), 0, 255) / 127.5 - 1


def render(seed: int, index: int, size: int = SIZE) -> Scene:
    """Scene ``index`` of the stream ``seed``: deterministic, independent of any other scene."""
    rng = _rng(seed, index)
    mask = _layout(rng, size)
    return Scene(_appearance(rng, mask).astype(np.float32), mask)


def render_batch(seed: int, start: int, count: int, size: int = SIZE) -> Scene:
    """Scenes ``start .. start+count-1`` of stream ``seed``: images (N, H, W, 3), masks (N, H, W)."""
    scenes = [render(seed, i, size) for i in range(start, start + count)]
    return Scene(np.stack([s.image for s in scenes]), np.stack([s.mask for s in scenes]))


def _distances(images_NHWC) -> np.ndarray:
    """L-infinity distance (0..255 units) of every pixel to every base colour: (..., H, W, n_classes)."""
    rgb = (np.asarray(images_NHWC, np.float32) + 1) * 127.5
    return np.abs(rgb[..., None, :] - BASE_COLORS).max(-1)


def segment(images_NHWC) -> np.ndarray:
    """The oracle: nearest base colour per pixel. Images in [-1, 1] (..., H, W, 3) -> class ids (..., H, W) uint8."""
    return np.argmin(_distances(images_NHWC), axis=-1).astype(np.uint8)


def oracle_confidence(images_NHWC) -> float:
    """Share of pixels within ``ORACLE_TOLERANCE`` of their nearest base colour (1.0 on clean scenes)."""
    return float(np.mean(_distances(images_NHWC).min(-1) <= ORACLE_TOLERANCE))


def class_frequencies(masks, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Pixel share of each class over a stack of masks: (n_classes,) summing to 1."""
    counts = np.bincount(np.asarray(masks).ravel(), minlength=n_classes)[:n_classes]
    return counts / max(counts.sum(), 1)


def scribbles(mask: np.ndarray, seed: int, strokes_per_class: int = 2, length: int = 10) -> np.ndarray:
    """Sparse annotation of a dense mask: a few random-walk strokes inside each class's region, 1 px wide.

    Returns (H, W) uint8 with 0 = not annotated and ``c + 1`` on strokes of class ``c`` (the sparse domains'
    convention). Strokes stay inside the region shrunk by one pixel, so they never touch another class.
    """
    rng = np.random.default_rng([int(seed), 0x5C21B])
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=np.uint8)
    padded = np.pad(mask, 1, mode="edge")
    interior = np.ones_like(mask, dtype=bool)  # pixels whose 8 neighbours share their class
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == mask
    steps = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)])
    for c in np.unique(mask):
        ys, xs = np.nonzero(interior & (mask == c))
        if len(ys) == 0:
            continue
        for _ in range(strokes_per_class):
            i = rng.integers(len(ys))
            py, px = int(ys[i]), int(xs[i])
            direction = steps[rng.integers(len(steps))]
            for _ in range(length):
                out[py, px] = c + 1
                if rng.random() < 0.3:
                    direction = steps[rng.integers(len(steps))]
                ny, nx = py + direction[0], px + direction[1]
                if 0 <= ny < h and 0 <= nx < w and interior[ny, nx] and mask[ny, nx] == c:
                    py, px = ny, nx
    return out


def upsample_mask(mask, factor: int) -> np.ndarray:
    """Nearest upsampling by an integer factor (..., H, W) -> (..., H*f, W*f): exact, as the pipeline's 256 masks."""
    mask = np.asarray(mask)
    return np.repeat(np.repeat(mask, factor, axis=-2), factor, axis=-1)


def downsample_mask(mask, size: int) -> np.ndarray:
    """Inverse of :func:`upsample_mask` (the centre-left sample of each block, as PIL NEAREST): (..., size, size)."""
    mask = np.asarray(mask)
    f = mask.shape[-1] // size
    if mask.shape[-1] != size * f or mask.shape[-2] != size * f:
        raise ValueError(f"mask of shape {mask.shape[-2:]} is not a multiple of {size}")
    return mask[..., f // 2::f, f // 2::f]


# ---------------------------------------------------------------------------------------------------------------
# Colour fidelity: is a region drawn in the colour its shape calls for?

OBJECT_CLASSES = (SUN, WATER, TREE, HOUSE)  # the classes whose regions have a shape of their own
MIN_REGION_PX = 6  # smaller connected regions (specks at a boundary) are not judged
_SHAPE_K = 7


def _region_features(region: np.ndarray, size: int) -> np.ndarray:
    """Shape features of one connected region (a boolean (H, W) mask): log aspect (width / height), fill of the
    bounding box, the width at 10/30/50/70/90% of its height over its widest row, log area and the height of its
    centre in the image. Nothing about colour."""
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    widths = region[y0:y1, x0:x1].sum(1).astype(np.float32)
    profile = [widths[min(int(f * h), h - 1)] / widths.max() for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    return np.array([np.log(w / h), len(ys) / (h * w), *profile, np.log(len(ys)), ys.mean() / size], np.float32)


def regions(mask: np.ndarray, classes=OBJECT_CLASSES) -> list[tuple[int, np.ndarray]]:
    """The connected regions (8-neighbour) of ``classes`` in one (H, W) class map with at least MIN_REGION_PX
    pixels: [(class, features)]."""
    from scipy import ndimage

    out = []
    for c in classes:
        labels, n = ndimage.label(mask == c, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            region = labels == i
            if region.sum() >= MIN_REGION_PX:
                out.append((c, _region_features(region, mask.shape[0])))
    return out


class ShapeClassifier(NamedTuple):
    """k-nearest neighbours (standardised features) over the regions of real scenes, whose class is known."""

    features: np.ndarray  # (N, F) standardised
    classes: np.ndarray  # (N,)
    mean: np.ndarray
    std: np.ndarray

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(features) - self.mean) / self.std
        # squared distances as |x|^2 - 2 x.f + |f|^2: (n, N), without an (n, N, F) intermediate
        d = (x * x).sum(1)[:, None] - 2 * x @ self.features.T + (self.features ** 2).sum(1)[None]
        nearest = self.classes[np.argpartition(d, _SHAPE_K - 1, axis=1)[:, :_SHAPE_K]]
        votes = np.stack([(nearest == c).sum(1) for c in OBJECT_CLASSES], 1)
        return np.asarray(OBJECT_CLASSES)[votes.argmax(1)]


def shape_classifier(n_scenes: int = 1000, size: int = SIZE) -> ShapeClassifier:
    """A region's class from its shape alone, fitted on the exact masks of ``n_scenes`` training-stream scenes."""
    masks = render_batch(TRAIN_SEED, 0, n_scenes, size).mask
    found = [r for m in masks for r in regions(m)]
    x = np.stack([f for _, f in found])
    mean, std = x.mean(0), x.std(0) + 1e-6
    return ShapeClassifier((x - mean) / std, np.array([c for c, _ in found]), mean, std)


def colour_fidelity(masks: np.ndarray, classifier: ShapeClassifier) -> dict:
    """Of the regions whose shape says class c (a lake's wide ellipse, a house's roofed box, a tree's crown on a
    trunk, the sun's disc), the share drawn in c's colour, per class of OBJECT_CLASSES.

    ``masks``: (N, H, W) class maps by colour (:func:`segment` of generated images). A lake drawn red (the house's
    colour) is a region with a lake's shape and the house's colour: it lowers water's fidelity. A house drawn as a
    roofless red blob has a shape the classifier may call a lake or a tree: it lowers theirs. Returns
    ``{"per_class": {name: share}, "n_regions": {name: count}, "confusion": [[shape c, colour c'] counts]}``;
    a class with no region of its shape has no share (None). On real scenes (masks = truth) the shares are the
    classifier's own precision: the ceiling to read generated figures against."""
    found = [r for m in np.asarray(masks) for r in regions(m)]
    k = len(OBJECT_CLASSES)
    confusion = np.zeros((k, k), np.int64)
    if found:
        colours = np.array([c for c, _ in found])
        shapes_ = classifier.predict(np.stack([f for _, f in found]))
        index = {c: i for i, c in enumerate(OBJECT_CLASSES)}
        for s, c in zip(shapes_, colours):
            confusion[index[int(s)], index[int(c)]] += 1
    per_class, counts = {}, {}
    for i, c in enumerate(OBJECT_CLASSES):
        n = int(confusion[i].sum())
        counts[CLASS_NAMES[c]] = n
        per_class[CLASS_NAMES[c]] = float(confusion[i, i] / n) if n else None
    return {"per_class": per_class, "n_regions": counts, "confusion": confusion.tolist(),
            "classes": [CLASS_NAMES[c] for c in OBJECT_CLASSES]}
