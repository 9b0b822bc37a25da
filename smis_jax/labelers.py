"""Pseudo-labellers beyond the paper's class means, behind one interface (``--labeler``).

A :class:`Labeler` is a pytree (flax.struct dataclass) built once per run from the K annotated shots and applied to
every generated batch at every training step. Four kinds:

* ``paper``: the original's rules (:mod:`smis_jax.labeling`), on the 64x64 features; exact, the golden behaviour.
* ``knn``: every annotated 64x64 pixel vector of the shots is a prototype (at most ``KNN_PER_CLASS`` per class,
  evenly spaced); each pixel of a sample takes the cosine-weighted vote of its ``topk`` most similar vectors. On
  sparse masks only neighbours above ``cos_th`` vote and a pixel without votes stays 0 ("no label"). With one
  vector per class and ``topk = 1`` this is the paper's dense rule.
* ``multiscale``: the paper's rules on multi-scale features: every tapped block (16x16, 32x32 and 64x64) is
  L2-normalised per pixel, upsampled bilinearly to 64x64 and concatenated (the cosine then averages the scales).
* ``linear``: a class-balanced linear softmax classifier (optax Adam, full batch, a few hundred steps, well under
  a second) fitted on the shots' multi-scale pixel features; on sparse masks fitted on the annotated pixels only,
  and a pixel whose top softmax probability is below ``LINEAR_CONFIDENCE`` stays 0.

The beyond-paper kinds fit on the shots' reliable pixels only (:func:`reliable_pixels`: where the image re-rendered
from the inverted codes matches the shot), when the shots' images are given.

Every kind takes ``out_size`` (labels are enlarged by repetition from 64x64, like :func:`labeling.pseudo_label`).
:func:`label_latents` is the one call a training step makes (generator up to 64x64 -> labels); :func:`to_state`
and :func:`from_state` give the flat dict of arrays that checkpoints and exports hold; a state holding only the
paper's prototypes (written before labellers existed) loads as ``paper``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from einops import rearrange

from smis_jax import labeling
from smis_jax.labeling import EPS, DensePrototypes, LabelingError, SparsePrototypes
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, GeneratorConfig, make_noise

__all__ = ["LABELERS", "Labeler", "as_labeler", "fit", "build", "reliable_pixels", "taps_of", "label_features", "shot_features",
           "combine_taps", "label", "label_latents", "to_state", "from_state", "describe"]

LABELERS = ("paper", "knn", "multiscale", "linear")
_CODES = {name: i for i, name in enumerate(LABELERS)}
# The blocks the multi-scale kinds read (clipped to the generator's resolutions >= 8).
MULTISCALE_TAPS = (16, 32, 64)
# knn: the most annotated vectors kept per class (evenly spaced in class, shot, row, column order), which bounds
# the per-pixel similarity row (and the cost per sample) whatever the mask size and shot count.
KNN_PER_CLASS = 256
# linear: sparse masks leave a pixel unlabelled where the classifier's top softmax probability is below this.
LINEAR_CONFIDENCE = 0.9
_LINEAR_STEPS, _LINEAR_LR, _LINEAR_WD = 300, 0.05, 1e-4
# Beyond-paper kinds fit only on the shots' reliable pixels: where the image re-rendered from the inverted codes
# (the same noise draw as the features) is within this mean absolute error of the shot (images in [-1, 1], both
# averaged to 64x64). Where inversion failed to draw a region, its mask says one class and its features another;
# fitting on those pixels is what made 5 shots worse than 1 on the built-in domain (docs/notes-23.md).
RELIABLE_ERR = 0.1
_PRECISION = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class Labeler:
    """A fitted labeller. ``protos``: the prototypes of ``paper``/``multiscale`` (Dense or SparsePrototypes) or
    ``knn``'s annotated vectors (SparsePrototypes with the classes as labelled, 0 included for dense masks);
    ``weight (C, L')``, ``bias (L',)``, ``present (L',)``: ``linear``'s classifier (L' = L dense, L - 1 sparse)."""

    protos: Any = None
    weight: Any = None
    bias: Any = None
    present: Any = None
    kind: str = flax.struct.field(pytree_node=False, default="paper")
    dense: bool = flax.struct.field(pytree_node=False, default=True)
    taps: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(FEATURE_RES,))
    n_classes: int = flax.struct.field(pytree_node=False, default=0)


def as_labeler(x) -> Labeler:
    """A :class:`Labeler`, or the paper's prototypes (what older code passes) wrapped as ``paper``."""
    if isinstance(x, Labeler):
        return x
    if isinstance(x, DensePrototypes):
        return Labeler(protos=x, kind="paper", dense=True, n_classes=x.vectors.shape[0])
    if isinstance(x, SparsePrototypes):
        return Labeler(protos=x, kind="paper", dense=False, n_classes=x.n_classes)
    raise LabelingError(f"expected a Labeler or prototypes, got {type(x).__name__}")


def _check_kind(kind: str) -> None:
    if kind not in LABELERS:
        raise LabelingError(f"unknown labeller {kind!r}; choose one of: {', '.join(LABELERS)}")


def taps_of(kind: str, config: GeneratorConfig | None = None) -> tuple[int, ...]:
    """The generator blocks a kind reads: (64,) for ``paper``/``knn``, else :data:`MULTISCALE_TAPS`."""
    _check_kind(kind)
    if kind in ("paper", "knn"):
        return (FEATURE_RES,)
    if config is None:
        return MULTISCALE_TAPS
    return tuple(r for r in MULTISCALE_TAPS if r in config.resolutions)


# ---------------------------------------------------------------------------------------------------------
# Features


def _normalise(x):
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + EPS)


def combine_taps(tapped: dict[int, jax.Array], taps: tuple[int, ...]):
    """{res: (B, r, r, C_r)} -> (B, 64, 64, sum C_r): each block unit-normalised per pixel, bilinear to 64x64."""
    out = []
    for r in taps:
        x = _normalise(tapped[r].astype(jnp.float32))
        if r != FEATURE_RES:
            x = jax.image.resize(x, (x.shape[0], FEATURE_RES, FEATURE_RES, x.shape[-1]), "linear")
        out.append(x)
    return jnp.concatenate(out, axis=-1)


def label_features(config: GeneratorConfig, gen_params, w_plus, noise, taps: tuple[int, ...] = (FEATURE_RES,),
                   offsets=None):
    """The generator stopped after its 64x64 block -> the features a labeller reads, (B, 64, 64, C).

    ``taps == (64,)``: the 64x64 block's raw output (the paper's features, bit for bit); otherwise the tapped
    blocks combined (normalised, upsampled, concatenated). ``offsets``: the generator's spatial offsets (see
    :class:`smis_jax.nets.stylegan2.Generator`), None for none. Traceable: call it inside a jitted step."""
    if tuple(taps) == (FEATURE_RES,):
        _, features = Generator(config).apply(gen_params, w_plus, noise, until_res=FEATURE_RES, offsets=offsets)
        return features
    (_, features), sown = Generator(config).apply(gen_params, w_plus, noise, until_res=FEATURE_RES,
                                                  offsets=offsets, mutable=["taps"])
    tapped = {int(k[3:]): v[0] for k, v in sown["taps"].items()}
    tapped[FEATURE_RES] = features
    return combine_taps(tapped, tuple(taps))


@functools.partial(jax.jit, static_argnames=("config", "taps"))
def _shot_features_fn(config, params, w_plus, key, taps):
    noise = make_noise(config, key, w_plus.shape[0], FEATURE_RES)
    return label_features(config, params, w_plus, noise, taps)


def shot_features(generator, w_plus, key, taps: tuple[int, ...] = (FEATURE_RES,)):
    """Features of the shots' inverted codes under one seeded noise draw (``generator.synthesize(w_plus, key=key,
    until_res=64)``'s noise), for ``taps``."""
    return _shot_features_fn(generator.config, generator.params, jnp.asarray(w_plus), key, tuple(taps))


# ---------------------------------------------------------------------------------------------------------
# Fitting (once per run)


def _knn_vectors(features_NHWC, masks64, dense: bool) -> SparsePrototypes:
    """Every annotated vector (at most KNN_PER_CLASS per class), unit length; dense masks keep class 0."""
    f = np.asarray(features_NHWC, np.float32)
    n_classes = masks64.shape[-1]
    cls, k, y, x = np.nonzero(rearrange(masks64, "n h w l -> l n h w"))
    keep = np.ones_like(cls, bool) if dense else cls >= 1
    cls, k, y, x = cls[keep], k[keep], y[keep], x[keep]
    pick = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        if len(idx) > KNN_PER_CLASS:
            idx = idx[np.linspace(0, len(idx) - 1, KNN_PER_CLASS).round().astype(int)]
        pick.append(idx)
    pick = np.concatenate(pick) if pick else np.zeros((0,), int)
    v = f[k[pick], y[pick], x[pick]]
    v = v / (np.linalg.norm(v, axis=-1, keepdims=True) + np.float32(EPS))
    return SparsePrototypes(vectors=jnp.asarray(v, jnp.float32), classes=jnp.asarray(cls[pick], jnp.int32),
                            n_classes=n_classes)


@functools.partial(jax.jit, static_argnames=("n_out", "steps"))
def _fit_linear(x_NC, y_N, weight_N, n_out: int, steps: int):
    """Class-balanced softmax regression: (weight (C, n_out), bias (n_out,)); full batch Adam(W) steps."""
    params = {"w": jnp.zeros((x_NC.shape[-1], n_out), jnp.float32), "b": jnp.zeros((n_out,), jnp.float32)}
    tx = optax.adamw(_LINEAR_LR, weight_decay=_LINEAR_WD)

    def loss_fn(p):
        logits = jnp.dot(x_NC, p["w"], precision=_PRECISION) + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_N)
        return jnp.sum(ce * weight_N) / jnp.sum(weight_N)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params["w"], params["b"]


def _linear(features_NHWC, masks64, dense: bool):
    f = np.asarray(features_NHWC, np.float32).reshape(-1, features_NHWC.shape[-1])
    m = masks64.reshape(-1, masks64.shape[-1])
    annotated = m.any(axis=-1)
    y = m.argmax(axis=-1)
    if not dense:  # class 0 = not annotated: fit classes 1.. on the annotated pixels, as rows 0..
        annotated &= y >= 1
        y = y - 1
    n_out = m.shape[-1] - (0 if dense else 1)
    x, y = f[annotated], y[annotated]
    counts = np.bincount(y, minlength=n_out).astype(np.float32)
    present = counts > 0
    if not present.any():
        raise LabelingError("the linear labeller needs at least one annotated pixel in the shots")
    w = 1.0 / np.maximum(counts, 1.0)  # class-balanced: every present class weighs the same
    weight, bias = _fit_linear(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(w[y]), n_out, _LINEAR_STEPS)
    return weight, bias, jnp.asarray(present)


def _keep_reliable(masks64, reliable):
    """Masks with the unreliable pixels unannotated, except for a class that would lose every pixel."""
    kept = masks64 & np.asarray(reliable, bool)[..., None]
    lost = masks64.any(axis=(0, 1, 2)) & ~kept.any(axis=(0, 1, 2))
    return np.where(lost, masks64, kept)


def fit(kind: str, features_NHWC, masks_onehot_NHWC, mode: str = "dense", reliable=None) -> Labeler:
    """A labeller of ``kind`` from the shots' features (:func:`label_features` with :func:`taps_of` ``kind``; the
    paper's raw 64x64 features for ``paper`` and ``knn``) and one-hot masks (K, Hm, Wm, L).

    ``reliable``: (K, 64, 64) bool, the pixels to fit on (:func:`reliable_pixels`); ignored by ``paper``, which
    stays the original's rule."""
    _check_kind(kind)
    if mode not in ("dense", "sparse"):
        raise LabelingError(f"mode must be 'dense' or 'sparse', got {mode!r}")
    dense = mode == "dense"
    n_classes = int(masks_onehot_NHWC.shape[-1])
    taps = (FEATURE_RES,) if kind in ("paper", "knn") else MULTISCALE_TAPS
    if kind == "paper":
        protos = labeling.prototypes(features_NHWC, masks_onehot_NHWC, mode=mode)
        return Labeler(protos=protos, kind=kind, dense=dense, taps=taps, n_classes=n_classes)
    masks64 = labeling._reduce_masks(features_NHWC, masks_onehot_NHWC)
    if reliable is not None:
        masks64 = _keep_reliable(masks64, reliable)
    if kind == "multiscale":
        protos = labeling.prototypes(features_NHWC, masks64.astype(np.float32), mode=mode)
        return Labeler(protos=protos, kind=kind, dense=dense, taps=taps, n_classes=n_classes)
    if kind == "knn":
        return Labeler(protos=_knn_vectors(features_NHWC, masks64, dense), kind=kind, dense=dense, taps=taps,
                       n_classes=n_classes)
    weight, bias, present = _linear(features_NHWC, masks64, dense)
    return Labeler(weight=weight, bias=bias, present=present, kind=kind, dense=dense, taps=taps, n_classes=n_classes)


def reliable_pixels(generator, w_plus, key, images_NHWC) -> np.ndarray:
    """(K, 64, 64) bool: where the shots re-rendered from ``w_plus`` (noise of ``key``, as :func:`shot_features`)
    are within :data:`RELIABLE_ERR` mean absolute error of ``images_NHWC`` (K, S, S, 3) in [-1, 1]."""
    recon, _ = generator.synthesize(jnp.asarray(w_plus), key=key)

    def to64(x):
        x = jnp.asarray(x, jnp.float32)
        s = x.shape[1]
        if s % FEATURE_RES == 0:
            f = s // FEATURE_RES
            return x.reshape(x.shape[0], FEATURE_RES, f, FEATURE_RES, f, 3).mean(axis=(2, 4))
        return jax.image.resize(x, (x.shape[0], FEATURE_RES, FEATURE_RES, 3), "linear")

    err = jnp.abs(to64(recon) - to64(images_NHWC)).mean(axis=-1)
    return np.asarray(err < RELIABLE_ERR)


def build(kind: str, generator, w_plus, key, masks_onehot_NHWC, mode: str = "dense", images=None) -> Labeler:
    """:func:`fit` on the features of the shots' codes ``w_plus`` under the noise draw of ``key``; with the shots'
    ``images``, beyond-paper kinds fit on their :func:`reliable_pixels` only."""
    taps = taps_of(kind, generator.config)
    reliable = None if images is None or kind == "paper" else reliable_pixels(generator, w_plus, key, images)
    features = shot_features(generator, w_plus, key, taps)
    return _with_taps(fit(kind, features, masks_onehot_NHWC, mode, reliable), taps)


def _with_taps(labeler: Labeler, taps) -> Labeler:
    return labeler.replace(taps=tuple(taps))


# ---------------------------------------------------------------------------------------------------------
# Labelling (every training step)


def _knn_labels(features_NHWC, labeler: Labeler, topk: int, cos_th):
    b, h, w, _ = features_NHWC.shape
    protos = labeler.protos
    n = protos.vectors.shape[0]
    if n == 0:
        return jnp.zeros((b, h, w), jnp.int32)
    k = min(topk, n)
    sim = jnp.einsum("bpc,nc->bpn", labeling._normalise_pixels(features_NHWC), protos.vectors, precision=_PRECISION)
    val, idx = jax.lax.top_k(sim, k)  # (B, P, k)
    cls = protos.classes[idx]
    if labeler.dense:
        votes = val
    else:
        votes = jnp.where(val > cos_th, val, 0.0)
    onehot = jax.nn.one_hot(cls, labeler.n_classes, dtype=jnp.float32)  # (B, P, k, L)
    score = jnp.sum(onehot * votes[..., None], axis=2)
    if labeler.dense:
        # Only classes among the neighbours compete (a vote sum is negative when its cosines are).
        score = jnp.where(onehot.sum(axis=2) > 0, score, -jnp.inf)
        label = jnp.argmax(score, axis=-1)
    else:
        label = jnp.where(score.max(axis=-1) > 0, jnp.argmax(score, axis=-1), 0)
    return label.astype(jnp.int32).reshape(b, h, w)


def _linear_labels(features_NHWC, labeler: Labeler):
    b, h, w, c = features_NHWC.shape
    if labeler.weight.shape[0] != c:
        raise LabelingError(f"features must be (B, H, W, {labeler.weight.shape[0]}) for this linear labeller, "
                            f"got {tuple(features_NHWC.shape)}")
    logits = jnp.einsum("bhwc,cl->bhwl", features_NHWC.astype(jnp.float32), labeler.weight,
                        precision=_PRECISION) + labeler.bias
    logits = jnp.where(labeler.present, logits, -jnp.inf)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if labeler.dense:
        return best
    confident = jax.nn.softmax(logits, axis=-1).max(axis=-1) >= LINEAR_CONFIDENCE
    return jnp.where(confident, best + 1, 0).astype(jnp.int32)


def label(features_NHWC, labeler, topk: int = 3, cos_th=0.5, out_size: int = 256, compat: bool = False):
    """Pseudo-labels (B, out_size, out_size) int32 from the labeller's features (:func:`label_features`)."""
    labeler = as_labeler(labeler)
    if labeler.kind in ("paper", "multiscale"):
        return labeling.pseudo_label(features_NHWC, labeler.protos, topk=topk, cos_th=cos_th, out_size=out_size,
                                     compat=compat)
    return _label_jit(features_NHWC, labeler, jnp.float32(cos_th), topk=topk, out_size=out_size)


@functools.partial(jax.jit, static_argnames=("topk", "out_size"))
def _label_jit(features_NHWC, labeler: Labeler, cos_th, *, topk: int, out_size: int):
    if features_NHWC.ndim != 4:
        raise LabelingError(f"features must be (B, H, W, C), got shape {tuple(features_NHWC.shape)}")
    h = features_NHWC.shape[1]
    if out_size % h:
        raise LabelingError(f"out_size {out_size} must be an integer multiple of the feature size {h}")
    if labeler.kind == "knn":
        labeling._check_features(features_NHWC, labeler.protos.vectors.shape[-1])
        lab = _knn_labels(features_NHWC, labeler, topk, cos_th)
    else:
        lab = _linear_labels(features_NHWC, labeler)
    s = out_size // h
    return jnp.repeat(jnp.repeat(lab, s, axis=1), s, axis=2)


def label_latents(config: GeneratorConfig, gen_params, w_plus, noise, labeler, topk: int = 3, cos_th=0.5,
                  out_size: int = 256, compat: bool = False, offsets=None):
    """W+ codes and noise (up to 64x64) -> pseudo-labels (B, out_size, out_size): what a training step calls.
    ``offsets``: the generator's (an encoder's offset head), None for none."""
    labeler = as_labeler(labeler)
    features = label_features(config, gen_params, w_plus, noise, labeler.taps, offsets=offsets)
    return label(features, labeler, topk=topk, cos_th=cos_th, out_size=out_size, compat=compat)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and exports


def to_state(labeler) -> dict[str, np.ndarray]:
    """A flat dict of numpy arrays for orbax (restores without a target tree). The paper's labeller writes exactly
    :func:`labeling.prototypes_state` plus a kind code, so readers of the prototypes alone still read it."""
    labeler = as_labeler(jax.device_get(labeler))
    out: dict[str, np.ndarray] = {}
    if labeler.protos is not None:
        out.update(labeling.prototypes_state(labeler.protos))
    out["labeler"] = np.asarray(_CODES[labeler.kind], np.int32)
    out["labeler_taps"] = np.asarray(labeler.taps, np.int32)
    out["labeler_dense"] = np.asarray(labeler.dense, np.int32)
    out["labeler_n_classes"] = np.asarray(labeler.n_classes, np.int32)
    if labeler.weight is not None:
        out.update(weight=np.asarray(labeler.weight, np.float32), bias=np.asarray(labeler.bias, np.float32),
                   present=np.asarray(labeler.present, bool))
    return out


def from_state(state) -> Labeler:
    """Inverse of :func:`to_state`; a state with prototypes only (older checkpoints, exports) is ``paper``."""
    if "labeler" not in state:
        return as_labeler(labeling.prototypes_from_state(state))
    code = int(np.asarray(state["labeler"]))
    if not 0 <= code < len(LABELERS):
        raise LabelingError(f"labeller state has unknown kind {code} (0..{len(LABELERS) - 1}: {', '.join(LABELERS)})")
    kind = LABELERS[code]
    common = dict(kind=kind, taps=tuple(int(t) for t in np.asarray(state["labeler_taps"]).ravel()),
                  dense=bool(np.asarray(state["labeler_dense"])), n_classes=int(np.asarray(state["labeler_n_classes"])))
    if kind == "linear":
        return Labeler(weight=jnp.asarray(state["weight"], jnp.float32), bias=jnp.asarray(state["bias"], jnp.float32),
                       present=jnp.asarray(state["present"], bool), **common)
    return Labeler(protos=labeling.prototypes_from_state(state), **common)


def describe(labeler) -> str:
    """One line for logs: the kind, its features and what it holds."""
    labeler = as_labeler(labeler)
    feats = "+".join(f"{r}" for r in labeler.taps)
    if labeler.kind == "linear":
        what = f"linear classifier {tuple(labeler.weight.shape)}"
    elif isinstance(labeler.protos, DensePrototypes):
        what = f"{int(np.asarray(labeler.protos.present).sum())} class means"
    else:
        what = f"{labeler.protos.vectors.shape[0]} annotated vectors"
    return f"labeller {labeler.kind} ({'dense' if labeler.dense else 'sparse'}, features {feats}): {what}"
