"""The editor's model side: one loaded export, compiled once, turning a painted mask into PNGs.

Nothing here knows about HTTP. :class:`Editor` holds the pipeline and the domain's palette; :meth:`Editor.update`
is one round of the page (class ids -> encoder -> generator -> PNGs) and runs exactly what
``python -m smis_jax.synthesize`` runs (:func:`smis_jax.synthesize.encode` / :func:`~smis_jax.synthesize.decode`):
the main image is the CLI's plain output (stored noise), the variants are ``--styles N --seed S --truncation T``
for a mask at index 0. :meth:`Editor.refine` runs ``synthesize --refine METHOD --refine-steps N`` for one mask
under its own lock, so painting (updates) goes on while a refinement runs. The parsers turn request bodies into class ids and raise :class:`InputError` (an HTTP
status and a one-line message) for anything a page or a user can get wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from smis_jax import (builtin, config as domains, data, export, labelers, refine as refinement, synthesize as syn,
                      viz)
from smis_jax.errors import ConfigError, InvalidValueError, UserError
from smis_jax.io.converted import ConversionError
from smis_jax.io import load_pipeline
from smis_jax.nets import psp

__all__ = ["InputError", "EditorDomain", "Update", "Editor", "domain_of", "png_bytes", "mask_png_bytes",
           "parse_update", "parse_refine", "parse_mask_json", "parse_mask_request", "mask_from_png", "ids_json", "MAX_UPLOAD_PIXELS",
           "PNG_SIGNATURE"]

MASK_SIZE = psp.INPUT_SIZE  # the page's masks are (256, 256) class ids (an encoder of 64x64 input reduces them)
MAX_UPLOAD_PIXELS = 4096 * 4096  # a larger PNG is refused before it is decoded (decompression bombs)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SEED = 2**31 - 1
MAX_REFINE_STEPS = 1000


class InputError(UserError, ValueError):
    """A request the editor cannot use: ``status`` (a 4xx) and a one-line message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class EditorDomain:
    """What the page needs to paint: class count, mode, one colour and one name per class."""

    name: str
    n_classes: int
    mode: str  # 'dense' | 'sparse' (class 0 = not annotated)
    colors: np.ndarray  # (n_classes, 3) uint8
    class_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.name, "n_classes": self.n_classes, "mode": self.mode,
                "colors": self.colors.tolist(), "class_names": list(self.class_names)}


def domain_of(export_config: dict) -> EditorDomain:
    """The export's domain (``opts.dataset_type``) and class count (``label_nc``, the encoder's input channels).

    A dataset type that is not one of :data:`smis_jax.config.DOMAINS` (an original pSp checkpoint's
    'celebs_seg_to_face', say) gives a dense domain with names 'class i'.
    """
    n = int(export_config.get("label_nc") or export_config["encoder"]["input_nc"])
    dataset_type = str((export_config.get("opts") or {}).get("dataset_type") or "unknown")
    domain = domains.DOMAINS.get(dataset_type)
    if domain is not None and domain.n_classes != n:
        raise ConfigError(f"the export's encoder takes {n} classes but its domain '{dataset_type}' has "
                         f"{domain.n_classes}")
    mode = domain.mode if domain is not None else "dense"
    names = getattr(domain, "class_names", None)
    if not names:  # a domain without names (every preset but the built-in ones)
        names = ["not annotated" if mode == "sparse" and i == 0 else f"class {i}" for i in range(n)]
    if len(names) != n:
        raise ConfigError(f"domain '{dataset_type}' names {len(names)} classes, its model takes {n}")
    return EditorDomain(dataset_type, n, mode, viz.palette(n), tuple(str(s) for s in names))


@dataclass(frozen=True)
class Update:
    image: bytes  # PNG (256, 256, 3): the mask's image (stored noise, as the CLI without --styles)
    variants: tuple[bytes, ...]  # N PNGs: latent-mask mixing with random styles (the CLI's --styles N)
    ms: float  # wall time of the whole update, PNG encoding included


@dataclass(frozen=True)
class Refined:
    image: bytes  # PNG (256, 256, 3): the refined W+ decoded with the stored noise
    method: str
    steps: int
    loss: tuple[float, float]  # the refinement loss before the first and after the last update
    ms: float


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG. Compression level 1: 3-5x faster than the default, a little larger."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_png_bytes(labels: np.ndarray) -> bytes:
    """Class ids (H, W) uint8 -> a grey PNG whose values are the ids (what ``synthesize --masks`` reads)."""
    return png_bytes(np.asarray(labels, np.uint8))


class Editor:
    """One export, loaded and compiled for the served shapes: batch 1 (the image) and 1 x ``variants`` (the row)."""

    def __init__(self, checkpoint: str | Path, variants: int = 4, examples: str | Path | None = None):
        if not 0 <= variants <= 16:
            raise InvalidValueError(f"variants must be in 0..16, got {variants}")
        self.checkpoint = Path(checkpoint)
        try:  # an export of train.run carries the prototypes refinement needs; a converted pSp checkpoint does not
            run_export = export.load(checkpoint)
            self.pipeline = run_export.pipeline
            self._refine_protos, self._refine_sparse = refinement.prototypes_for(run_export)
            self._refine_labeler = labelers.as_labeler(run_export.prototypes)
        except ConversionError:
            self.pipeline = load_pipeline(checkpoint)
            self._refine_protos, self._refine_sparse, self._refine_labeler = None, False, None
        # every method with prototypes; a linear run without them (a real preset) refines with wplus and fs on its
        # labeller
        linear = self._refine_labeler is not None and self._refine_labeler.kind == "linear"
        self._refine_methods = list(refinement.METHODS) if self._refine_protos is not None else \
            (["wplus", "fs"] if linear else [])
        self._refine_lock = threading.Lock()  # one refinement at a time, beside (not blocking) the updates
        self.domain = domain_of(self.pipeline.config)
        self.variants = int(variants)
        self.size = MASK_SIZE
        self.examples = self._list_examples(examples)
        self._lock = threading.Lock()  # one update at a time: the CPUs are shared, queueing is faster than splitting
        t0 = time.perf_counter()
        self.update(np.zeros((self.size, self.size), np.uint8))  # compiles every function the page will call
        self.compile_s = time.perf_counter() - t0

    def _list_examples(self, folder) -> dict[str, Path | np.ndarray]:
        """``folder``'s label PNGs by name; without one, the export's ``examples/``, or for a built-in domain its
        held-out test masks (drawn from their fixed seed, no files)."""
        if folder is None:
            folder = self.checkpoint / "examples"
            if not folder.is_dir():
                preset = domains.DOMAINS.get(self.domain.name)
                if preset is None or not preset.builtin:
                    return {}
                names, labels, _ = builtin.test_masks(preset)
                return dict(zip(names, labels))
        return {p.stem: p for p in data.list_images(folder)}

    def info(self) -> dict[str, Any]:
        return {**self.domain.to_json(), "size": self.size, "variants": self.variants,
                "refine": list(self._refine_methods),
                "examples": sorted(self.examples), "checkpoint": str(self.checkpoint)}

    def example(self, name: str) -> np.ndarray:
        if name not in self.examples:
            raise InputError(404, f"no example mask named {name!r}")
        example = self.examples[name]
        if isinstance(example, np.ndarray):
            return example
        try:
            return data.read_label(example, self.domain.n_classes, self.size)
        except data.DataError as e:
            raise InputError(422, str(e)) from None

    def update(self, labels: np.ndarray, seed: int = 0, truncation: float = 1.0) -> Update:
        """Class ids (size, size) uint8 -> the image and the variants as PNGs. Shapes never change: no retrace."""
        labels = np.asarray(labels)
        if labels.shape != (self.size, self.size) or labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 ({self.size}, {self.size}), got {labels.dtype} {labels.shape}")
        with self._lock:
            t0 = time.perf_counter()
            onehot = data.onehot(jax.numpy.asarray(labels[None]), self.domain.n_classes)  # (1, 256, 256, C)
            codes, offsets = syn.encode_with_offsets(self.pipeline, onehot)  # (1, S, D): one encoding, two decodes
            key = jax.random.key(seed)
            image = syn.decode(self.pipeline, codes, key, offsets=offsets)  # (1, 256, 256, 3)
            rows = syn.decode(self.pipeline, codes, key, styles=self.variants, truncation=truncation,
                              offsets=offsets) if self.variants else None  # (1, N, 256, 256, 3)
            image_png = png_bytes(viz.to_uint8(np.asarray(image[0])))
            variant_pngs = tuple(png_bytes(im) for im in viz.to_uint8(np.asarray(rows[0]))) if rows is not None else ()
            return Update(image_png, variant_pngs, 1000 * (time.perf_counter() - t0))


    def refine(self, labels: np.ndarray, method: str = "wplus", steps: int | None = None) -> Refined:
        """Class ids (size, size) uint8 -> the refined image (``synthesize --refine method --refine-steps steps``).

        Runs under its own lock, so :meth:`update` (painting) is not held up; the first call of a method compiles
        its loop (every step count up to 256 shares that program)."""
        if not self._refine_methods:
            raise InputError(409, f"{self.checkpoint}: refinement needs the prototypes of an export written by "
                                  f"train.run; this checkpoint has none")
        if method not in self._refine_methods:
            raise InputError(409, f"{self.checkpoint}: refinement '{method}' needs the paper's prototypes; this "
                                  f"export (--labeler {self._refine_labeler.kind}) refines with "
                                  f"{', '.join(self._refine_methods)}")
        labels = np.asarray(labels)
        if labels.shape != (self.size, self.size) or labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 ({self.size}, {self.size}), got {labels.dtype} {labels.shape}")
        options = refinement.default_options(method, steps)
        with self._refine_lock:
            t0 = time.perf_counter()
            onehot = data.onehot(jax.numpy.asarray(labels[None]), self.domain.n_classes)
            codes, offsets = syn.encode_with_offsets(self.pipeline, onehot)
            result = refinement.refine(self.pipeline.generator, self._refine_protos, codes + self.pipeline.latent_avg,
                                       labels[None], options, sparse=self._refine_sparse,
                                       labeler=self._refine_labeler, offsets=offsets)
            image = syn.decode(self.pipeline, result.w_plus - self.pipeline.latent_avg, jax.random.key(0),
                               offsets=result.offsets)
            png = png_bytes(viz.to_uint8(np.asarray(image[0])))
            loss = (float(result.losses[0, 0]), float(result.losses[0, -1]))
            return Refined(png, options.method, options.steps, loss, 1000 * (time.perf_counter() - t0))


# ---------------------------------------------------------------------------------------------------------------
# Request bodies -> class ids. Each failure is an InputError with the status the server answers.

def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(400, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InputError(400, f"malformed JSON: expected an object, got {type(obj).__name__}")
    return obj


def parse_mask_json(mask: Any, domain: EditorDomain, size: int = MASK_SIZE) -> np.ndarray:
    """``{"width", "height", "ids": base64 of width*height uint8 class ids, row-major}`` -> (size, size) uint8."""
    if not isinstance(mask, dict):
        raise InputError(400, "'mask' must be an object {width, height, ids}")
    w, h = mask.get("width"), mask.get("height")
    if not (isinstance(w, int) and isinstance(h, int)):
        raise InputError(400, "'mask' needs integer 'width' and 'height'")
    if (w, h) != (size, size):
        raise InputError(422, f"mask is {w}x{h}, this model takes {size}x{size}")
    ids = mask.get("ids")
    if not isinstance(ids, str):
        raise InputError(400, "'mask.ids' must be a base64 string of class ids")
    try:
        raw = base64.b64decode(ids, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, "'mask.ids' is not valid base64") from None
    if len(raw) != w * h:
        raise InputError(422, f"mask holds {len(raw)} class ids, a {w}x{h} mask needs {w * h}")
    labels = np.frombuffer(raw, np.uint8).reshape(h, w)
    return _check_ids(labels, domain, "mask")


def _check_ids(labels: np.ndarray, domain: EditorDomain, what: str) -> np.ndarray:
    bad = labels >= domain.n_classes
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise InputError(422, f"{what}: class id {int(labels[y, x])} at (x={x}, y={y}) is not in the palette "
                              f"(0..{domain.n_classes - 1}); {int(bad.sum())} pixels out of range")
    return labels


def parse_update(body: bytes, domain: EditorDomain, size: int = MASK_SIZE) -> tuple[np.ndarray, int, float]:
    """An update request ``{"mask": {...}, "seed": int, "truncation": float}`` -> (labels, seed, truncation)."""
    obj = _json_object(body)
    if "mask" not in obj:
        raise InputError(400, "missing field 'mask'")
    labels = parse_mask_json(obj["mask"], domain, size)
    seed = obj.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InputError(400, f"'seed' must be an integer in 0..{MAX_SEED}, got {seed!r}")
    truncation = obj.get("truncation", 1.0)
    if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not 0.0 <= truncation <= 1.0:
        raise InputError(400, f"'truncation' must be a number in [0, 1], got {truncation!r}")
    return labels, seed, float(truncation)


def parse_refine(body: bytes, domain: EditorDomain, size: int = MASK_SIZE) -> tuple[np.ndarray, str, int | None]:
    """A refine request ``{"mask": {...}, "method": "original"|"wplus"|"fs", "steps": int}`` -> (labels, method,
    steps)."""
    obj = _json_object(body)
    if "mask" not in obj:
        raise InputError(400, "missing field 'mask'")
    labels = parse_mask_json(obj["mask"], domain, size)
    method = obj.get("method", "wplus")
    if method not in refinement.METHODS:
        raise InputError(400, f"'method' must be one of {', '.join(refinement.METHODS)}, got {method!r}")
    steps = obj.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)
                              or not 0 <= steps <= MAX_REFINE_STEPS):
        raise InputError(400, f"'steps' must be an integer in 0..{MAX_REFINE_STEPS}, got {steps!r}")
    return labels, method, steps


def parse_mask_request(body: bytes, domain: EditorDomain, size: int = MASK_SIZE) -> np.ndarray:
    obj = _json_object(body)
    if "mask" not in obj:
        raise InputError(400, "missing field 'mask'")
    return parse_mask_json(obj["mask"], domain, size)


def mask_from_png(body: bytes, domain: EditorDomain, name: str = "upload", size: int = MASK_SIZE) -> np.ndarray:
    """An uploaded label PNG -> (size, size) class ids, read as the pipeline reads masks (NEAREST-resized)."""
    if not body.startswith(PNG_SIGNATURE):
        raise InputError(415, f"{name}: not a PNG file (it starts with {body[:8]!r}); upload a label PNG whose "
                              f"pixel values are class ids")
    try:
        img = Image.open(io.BytesIO(body))
        w, h = img.size
        if w * h > MAX_UPLOAD_PIXELS:
            raise InputError(413, f"{name}: {w}x{h} pixels is too large (at most {MAX_UPLOAD_PIXELS} pixels)")
        if w != h:
            raise InputError(422, f"{name}: mask is {w}x{h}; masks must be square (they are resized to "
                                  f"{size}x{size})")
        img.load()
    except InputError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data; all mean the same to the user
        raise InputError(400, f"{name}: cannot read the PNG ({type(e).__name__}: {e})") from None
    try:
        return data.label_from_image(img, domain.n_classes, size, name)
    except data.DataError as e:
        raise InputError(422, str(e)) from None  # names the value, where it is and the valid ids


def ids_json(labels: np.ndarray) -> dict[str, Any]:
    """(H, W) uint8 -> the JSON form the page and :func:`parse_mask_json` use."""
    h, w = labels.shape
    return {"width": int(w), "height": int(h), "ids": base64.b64encode(np.ascontiguousarray(labels, np.uint8)).decode()}
