"""Looking at results: colourised label maps, [-1, 1] images as uint8, side-by-side grids, PNG writing.

The first 19 colours are CelebAMask-HQ's (as pSp's ``utils/common.py: get_colors``); classes beyond them get
fixed pseudo-random colours (seeded, so a class keeps its colour across runs and class counts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["CELEBAMASK_COLORS", "palette", "colorize", "to_uint8", "grid", "titled_grid", "class_legend", "save_png",
           "plot"]

CELEBAMASK_COLORS = np.array([
    [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255], [204, 0, 204], [0, 255, 255],
    [255, 204, 204], [102, 51, 0], [255, 0, 0], [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204],
    [255, 51, 153], [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
], dtype=np.uint8)

_MAX_CLASSES = 256  # labels are uint8
_PALETTE = np.concatenate([
    CELEBAMASK_COLORS,
    np.random.default_rng(0).integers(0, 256, (_MAX_CLASSES - len(CELEBAMASK_COLORS), 3), dtype=np.uint8),
])


def palette(n_classes: int = _MAX_CLASSES) -> np.ndarray:
    """(n_classes, 3) uint8 colours: CelebAMask-HQ's 19, then fixed pseudo-random ones."""
    if not 1 <= n_classes <= _MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{_MAX_CLASSES}, got {n_classes}")
    return _PALETTE[:n_classes].copy()


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids (..., H, W) -> uint8 RGB (..., H, W, 3). For a one-hot/score map (..., H, W, C), argmax it first."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"colorize takes integer class ids, got dtype {labels.dtype} (argmax a one-hot map first)")
    if labels.size and (labels.min() < 0 or labels.max() >= _MAX_CLASSES):
        raise ValueError(f"class ids must be in 0..{_MAX_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    return _PALETTE[labels]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Image in [-1, 1] (..., H, W, 3) float -> uint8, as pSp's ``tensor2im``: clip((x+1)/2, 0, 1) * 255, truncated."""
    x = (np.asarray(image, np.float32) + 1.0) / 2.0
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]] | Sequence[np.ndarray], pad: int = 0, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (H, W, 3): a list of rows (each a list of images) or one row; rows are left-aligned.

    ``pad`` pixels of ``fill`` go between images. Images in a row must share their height.
    """
    if len(rows) and isinstance(rows[0], np.ndarray) and rows[0].ndim == 3:
        rows = [rows]
    rendered = []
    for r, row in enumerate(rows):
        if not len(row):
            raise ValueError(f"grid row {r} is empty")
        heights = {im.shape[0] for im in row}
        if len(heights) != 1:
            raise ValueError(f"grid row {r}: images of different heights {sorted(heights)}")
        parts = []
        for im in row:
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"grid takes uint8 (H, W, 3) images, got {im.dtype} {im.shape}")
            if parts and pad:
                parts.append(np.full((im.shape[0], pad, 3), fill, np.uint8))
            parts.append(im)
        rendered.append(np.concatenate(parts, axis=1))
    width = max(r.shape[1] for r in rendered)
    out = []
    for i, r in enumerate(rendered):
        if i and pad:
            out.append(np.full((pad, width, 3), fill, np.uint8))
        if r.shape[1] < width:
            r = np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), fill, np.uint8)], axis=1)
        out.append(r)
    return np.concatenate(out, axis=0)


TITLE_HEIGHT = 16  # the title strip above a titled grid: the bitmap font's 11 px line, centred
_LEGEND_LINE = 16  # one legend line: a 10 px swatch and the class name
_INK = (0, 0, 0)


def _font():
    """PIL's built-in bitmap font (no font file is read or downloaded)."""
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def class_legend(n_classes: int, names: Sequence[str] = ()) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(name, colour), ...]`` for class ids 0..n_classes-1 in :func:`colorize`'s colours; ``names`` (a domain's
    ``class_names``) when given, else "class i"."""
    colours = palette(n_classes)
    if names and len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    return [(f"{i} {names[i]}" if names else f"class {i}", tuple(int(v) for v in colours[i])) for i in range(n_classes)]


def _legend_strip(entries: Sequence[tuple[str, Sequence[int]]], width: int, fill: int) -> np.ndarray:
    """Swatch + name per entry, left to right, wrapped at ``width``: a uint8 (lines * 16, width, 3) strip."""
    from PIL import Image, ImageDraw

    font = _font()
    boxes, x, y = [], 4, 0
    for name, _ in entries:
        w = 14 + int(font.getlength(name))
        if x > 4 and x + w > width - 4:
            x, y = 4, y + _LEGEND_LINE
        boxes.append((x, y))
        x += w + 12
    img = Image.new("RGB", (width, y + _LEGEND_LINE), (fill,) * 3)
    draw = ImageDraw.Draw(img)
    for (name, colour), (x, y) in zip(entries, boxes):
        draw.rectangle([x, y + 3, x + 9, y + 12], fill=tuple(colour), outline=(128, 128, 128))
        draw.text((x + 14, y + 2), name, fill=_INK, font=font)
    return np.asarray(img)


def titled_grid(rows: Sequence[Sequence[np.ndarray]] | Sequence[np.ndarray], titles: Sequence[str], pad: int = 0,
                fill: int = 255, legend: Sequence[tuple[str, Sequence[int]]] = ()) -> np.ndarray:
    """:func:`grid` with a title above each column (the first row's images set the columns) and, with ``legend``
    (see :func:`class_legend`), colour swatches and class names below. The grid's pixels are unchanged: they sit at
    rows ``TITLE_HEIGHT : TITLE_HEIGHT + grid height``."""
    from PIL import Image, ImageDraw

    body = grid(rows, pad=pad, fill=fill)
    first = rows if len(rows) and isinstance(rows[0], np.ndarray) and rows[0].ndim == 3 else rows[0]
    if len(titles) > len(first):
        raise ValueError(f"{len(titles)} titles for {len(first)} columns")
    width = body.shape[1]
    head = Image.new("RGB", (width, TITLE_HEIGHT), (fill,) * 3)
    draw, font = ImageDraw.Draw(head), _font()
    x = 0
    for title, im in zip(titles, first):
        w = im.shape[1]
        draw.text((x + max((w - font.getlength(title)) // 2, 0), 2), title, fill=_INK, font=font)
        x += w + pad
    parts = [np.asarray(head), body]
    if legend:
        parts.append(_legend_strip(legend, width, fill))
    return np.concatenate(parts, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) or (H, W) image as PNG, creating parent folders."""
    from PIL import Image

    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png takes uint8 images, got {image.dtype} (use to_uint8)")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def plot(points, title: str = "", size: tuple[int, int] = (320, 200)) -> np.ndarray:
    """A line chart of ``points`` [(x, y), ...] as a uint8 (H, W, 3) image, with the title and the y range
    written in; enough to see a curve's shape without a plotting library."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    pts = [(float(x), float(y)) for x, y in points if np.isfinite(float(y))]
    left, top, right, bottom = 8, 22, w - 8, h - 18
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    draw.text((left, 4), title, fill=(0, 0, 0))
    if pts:
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1e-9)
        y0, y1 = ys.min(), max(ys.max(), ys.min() + 1e-9)
        line = [(left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))
                for x, y in pts]
        draw.line(line if len(line) > 1 else line * 2, fill=(200, 40, 40), width=2)
        draw.text((left + 2, top + 2), f"{y1:.4g}", fill=(90, 90, 90))
        draw.text((left + 2, bottom - 12), f"{y0:.4g}", fill=(90, 90, 90))
        draw.text((left, bottom + 3), f"{x0:.4g}", fill=(90, 90, 90))
        draw.text((right - 40, bottom + 3), f"{x1:.4g}", fill=(90, 90, 90))
    return np.asarray(img)
