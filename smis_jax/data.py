"""Reading label maps and photos exactly as the original data pipeline does, with errors that name the file.

The original (pSp ``SegToImageTransforms``) reads a label PNG with PIL, ``convert('L')``, resizes it to 256x256
with PIL NEAREST (which samples source pixel ``floor((i + 0.5) * in / 256)``; 512 -> 2i+1, 1024 -> 4i+2) and
one-hots the grey value. Photos are PIL RGB, bilinear-resized to 256x256, ``ToTensor`` + ``Normalize(0.5, 0.5)``.
We keep PIL for both so the sampling is bit-identical.

Label formats accepted (pixel value = class id):

* ``L`` (and ``LA``, ``I``, ``I;16``): the value itself.
* ``RGB``/``RGBA`` with R = G = B everywhere (as the shipped LSUN labels): the grey value, which is what
  ``convert('L')`` gives. A *colour* RGB label is refused: ``convert('L')`` would turn colours into arbitrary
  luminance ids, and we cannot know the colour-to-class table.
* ``P`` (palette) images: ``convert('L')`` maps each index through the palette's luminance, which corrupts
  indexed label maps (VOC/ADE style). If every palette entry used is grey, the grey value is the id (identical to
  what the original reads); otherwise the palette *index* is the class id (the VOC/ADE convention), never the
  luminance.

Pairing of photos and labels is by file name (stem), not by sorted position as in the original, which silently
mis-pairs when one folder has an extra file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from smis_jax.errors import UserError

__all__ = [
    "DataError",
    "LabelError",
    "IMAGE_EXTENSIONS",
    "read_label",
    "label_from_image",
    "read_image",
    "onehot",
    "list_images",
    "paired_files",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(UserError, ValueError):
    """A data file or folder cannot be used; the one-line message names it and says why."""


class LabelError(DataError):
    """A label map holds a value that is not a class id of the model (or cannot be read as class ids)."""


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    return img


def _label_values(img: Image.Image, path: Path) -> np.ndarray:
    """Class ids of a label image at its own resolution, ``(H, W)`` int64."""
    mode = img.mode
    if mode == "P":
        index = np.asarray(img, dtype=np.int64)
        palette = np.asarray(img.getpalette("RGB") or [], dtype=np.int64).reshape(-1, 3)
        used = np.unique(index)
        if used.size and used.max() < len(palette):
            rgb = palette[used]
            if np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]):
                # A grey palette: convert('L') gives exactly the grey value (the original's reading).
                return palette[index, 0]
        return index
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        if not grey.all():
            y, x = np.argwhere(~grey)[0]
            raise LabelError(
                f"{path}: colour label image (pixel (x={x}, y={y}) is RGB {tuple(int(c) for c in rgb[y, x])}); "
                f"labels must hold class ids as grey values (R=G=B) or be single-channel/indexed PNGs"
            )
        return rgb[..., 0].astype(np.int64)
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(img)
        if mode == "F" and not np.all(values == np.round(values)):
            raise LabelError(f"{path}: floating-point label image with non-integer values")
        return values.astype(np.int64)
    if mode in ("L", "LA", "1"):
        return np.asarray(img.convert("L"), dtype=np.int64)
    raise LabelError(f"{path}: unsupported label image mode '{mode}'")


def read_label(path: str | os.PathLike, n_classes: int, size: int = 256) -> np.ndarray:
    """Read a label map as class ids resized with PIL NEAREST to ``(size, size)``; returns uint8 ``(size, size)``.

    Raises :class:`LabelError` naming the file, the first offending value and ``n_classes`` if any pixel of the
    file (checked at full resolution, before resizing) is ``>= n_classes``; :class:`DataError` if it is unreadable.
    """
    path = Path(path)
    return label_from_image(_open(path), n_classes, size, str(path))


def label_from_image(img: Image.Image, n_classes: int, size: int = 256, name: str = "label") -> np.ndarray:
    """:func:`read_label` for an image already opened (an upload, a file in memory); ``name`` goes in messages."""
    if not 1 <= n_classes <= 256:
        raise ValueError(f"n_classes must be in 1..256 (uint8 labels), got {n_classes}")
    path = name  # named in every message
    values = _label_values(img, path)  # (H, W)
    bad = values >= n_classes
    if bad.any() or values.min(initial=0) < 0:
        vmax = int(values.max())
        y, x = np.argwhere(bad)[0] if bad.any() else np.argwhere(values < 0)[0]
        raise LabelError(
            f"{path}: label value {int(values[y, x])} at (x={x}, y={y}) is not a class id of a {n_classes}-class model "
            f"(valid 0..{n_classes - 1}; largest value in the file {vmax}, {int(bad.sum())} pixels out of range)"
        )
    labels = Image.fromarray(values.astype(np.uint8), mode="L")
    if labels.size != (size, size):
        labels = labels.resize((size, size), Image.NEAREST)
    return np.asarray(labels, dtype=np.uint8)


def read_image(path: str | os.PathLike, size: int = 256) -> np.ndarray:
    """A photo as float32 ``(size, size, 3)`` in [-1, 1]: PIL RGB, bilinear resize, ToTensor + Normalize(.5, .5)."""
    path = Path(path)
    img = _open(path).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return (x - np.float32(0.5)) / np.float32(0.5)


def onehot(labels, n_classes: int):
    """One-hot class ids: ``(..., H, W)`` integer -> float32 ``(..., H, W, n_classes)``.

    numpy in, numpy out; jax in, jax out.

    Values outside ``0..n_classes-1`` raise :class:`LabelError` for numpy input; for traced jax input they give
    all-zero vectors (checking them would need a host sync), so validate with :func:`read_label` first.
    """
    if isinstance(labels, np.ndarray) or np.isscalar(labels):
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise LabelError(
                f"label value {int(labels.max() if labels.max() >= n_classes else labels.min())} "
                f"is not a class id of a {n_classes}-class model"
            )
        return (labels[..., None] == np.arange(n_classes, dtype=labels.dtype)).astype(np.float32)
    import jax  # only for jax inputs: reading masks and images needs numpy and PIL alone

    return jax.nn.one_hot(labels, n_classes, dtype=np.float32)


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive) directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{directory}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _by_stem(files: Sequence[Path], directory: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"{directory}: two files share the name '{f.stem}' ({out[f.stem].name}, {f.name})")
        out[f.stem] = f
    return out


def paired_files(images_dir: str | os.PathLike, labels_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``[(image, label), ...]`` paired by file name without extension, sorted by name.

    Every image must have a label and vice versa; otherwise :class:`DataError` names the unmatched files.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    images = _by_stem(list_images(images_dir), images_dir)
    labels = _by_stem(list_images(labels_dir), labels_dir)
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"images without a label in {labels_dir}: {', '.join(images[s].name for s in no_label[:5])}"
                         + (f" (and {len(no_label) - 5} more)" if len(no_label) > 5 else ""))
        if no_image:
            parts.append(f"labels without an image in {images_dir}: {', '.join(labels[s].name for s in no_image[:5])}"
                         + (f" (and {len(no_image) - 5} more)" if len(no_image) > 5 else ""))
        raise DataError("; ".join(parts))
    return [(images[s], labels[s]) for s in sorted(images)]
