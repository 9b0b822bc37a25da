"""Class prototypes from the few annotated shots and pseudo-labels for generated samples (SPEC 1b-1d).

Every generated sample is labelled from its 64x64 generator features ``F`` (the tap after the second styled
conv of the 64x64 block) by comparing them with vectors taken from the K annotated shots:

* **dense** (segmentation masks, e.g. CelebAMask, 19 classes): one prototype per class, the mean over shots of
  the per-shot masked mean feature, L2-normalised; a pixel gets the class of the most cosine-similar prototype.
* **sparse** (scribbles/landmarks, class 0 = "not annotated"): every annotated 64x64 feature vector, each
  L2-normalised; each vector labels its ``topk`` most similar pixels of the sample when the cosine exceeds
  ``cos_th``; a pixel chosen by several classes goes to the one with the highest cosine (lowest class id on
  ties); pixels nobody chose stay 0.

Masks are reduced to the feature resolution with torch's ``nearest`` rule, ``x[:, ::4, ::4]`` (the top-left
pixel of each 4x4 block; ``jax.image.resize`` samples the centre and would not match), and labels are enlarged
by repetition.

:func:`pseudo_label` is one jitted function (static ``topk``, ``out_size``, ``compat``, ``chunk``), so a
training loop compiles it once per batch shape. The ``_*_reference`` functions are slow numpy twins that
mirror the original per-sample, per-class loops (``psp.py``); tests prove the fast paths agree with them. The
sparse twin's loop, :func:`original_sparse_loop`, is also what the benchmark's original paths run
(:mod:`smis_jax.bench.reference`), with the per-class step on the device or in torch.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from smis_jax.errors import UserError

__all__ = [
    "LabelingError",
    "DensePrototypes",
    "SparsePrototypes",
    "prototypes",
    "pseudo_label",
    "cosine_scores",
    "labels_to_onehot",
    "prototypes_state",
    "prototypes_from_state",
]

# Normalisation epsilon of the original (psp.py: ``x / (norm + 1e-8)``, ``sum / (count + 1e-8)``).
EPS = 1e-8

# Labels are argmaxes and thresholds of cosines: TF32/bf16 matmuls (the GPU default for float32) would move
# near-ties and threshold crossings, so every similarity is computed in full float32.
_PRECISION = jax.lax.Precision.HIGHEST

# Sparse labelling materialises a (B, n, H*W) float32 similarity block for n annotated vectors at a time. Up to
# this many elements (2**27 = 512 MiB) the whole (B, N, H*W) block is one matmul + top_k; beyond it the vectors
# are processed in equal chunks by ``lax.map`` (sequential, so peak memory stays at one chunk's block).
_SPARSE_BLOCK_ELEMENTS = 2**27


# For small k the sparse top-k runs as k rounds of (max, first argmax, mask out) instead of ``lax.top_k``: the
# same result (descending values, lower pixel first on ties), but built from reductions that XLA's SPMD
# partitioner keeps sharded along the batch, whereas ``lax.top_k`` on a batch-sharded (B, n, H*W) block is
# all-gathered to every device (seen on XLA:CPU with jax 0.10). It costs k passes over the block instead of
# one, small next to the similarity matmul. Larger k falls back to ``lax.top_k``.
_ROUNDS_TOPK_MAX = 8


class LabelingError(UserError, ValueError):
    """Features, masks or prototypes of inconsistent shapes; the message names the arrays and shapes."""


@flax.struct.dataclass
class DensePrototypes:
    """One unit vector per class.

    vectors: (L, C) float32, L2-normalised; exactly zero for classes absent from every shot.
    present: (L,) bool, the class covers at least one 64x64 pixel of at least one shot.
    """

    vectors: jax.Array
    present: jax.Array

    @property
    def n_classes(self) -> int:
        return self.vectors.shape[0]


@flax.struct.dataclass
class SparsePrototypes:
    """Every annotated feature vector of classes >= 1, class by class.

    vectors: (N, C) float32, each L2-normalised; ordered by class, then shot, then row-major pixel.
    classes: (N,) int32 class id of each vector (1 .. n_classes-1, non-decreasing).
    n_classes: static class count L (class 0 = not annotated), fixes the label map's value range.
    """

    vectors: jax.Array
    classes: jax.Array
    n_classes: int = flax.struct.field(pytree_node=False)


# ---------------------------------------------------------------------------------------------------------
# Prototypes (run once per training run)


def _reduce_masks(features_NHWC, masks_onehot_NHWC) -> np.ndarray:
    """(K, Hm, Wm, L) one-hot -> (K, H, W, L) bool at the feature resolution, torch-nearest (top-left) rule."""
    if features_NHWC.ndim != 4:
        raise LabelingError(f"features must be (K, H, W, C), got shape {tuple(features_NHWC.shape)}")
    if masks_onehot_NHWC.ndim != 4:
        raise LabelingError(f"masks must be one-hot (K, H, W, L), got shape {tuple(masks_onehot_NHWC.shape)}")
    k, h, w, _ = features_NHWC.shape
    mk, mh, mw, _ = masks_onehot_NHWC.shape
    if mk != k or mh % h or mw % w or mh // h != mw // w:
        raise LabelingError(
            f"masks of shape {tuple(masks_onehot_NHWC.shape)} do not fit features of shape "
            f"{tuple(features_NHWC.shape)} (need the same K and a mask size that is an integer multiple of {h}x{w})"
        )
    step = mh // h
    # torch F.interpolate(mode='nearest') with an integer factor reads source pixel floor(i * step) = i * step.
    return np.asarray(masks_onehot_NHWC)[:, ::step, ::step] > 0.5


def prototypes(features_NHWC, masks_onehot_NHWC, mode: str = "dense"):
    """Class prototypes from the K annotated shots (SPEC 1b).

    features_NHWC: (K, H, W, C) generator features of the shots (H = W = 64 in practice).
    masks_onehot_NHWC: (K, Hm, Wm, L) one-hot masks, Hm an integer multiple of H (256 or 64); reduced to H by
        ``x[:, ::Hm/H, ::Hm/H]``.
    mode: "dense" -> :class:`DensePrototypes`; "sparse" -> :class:`SparsePrototypes` (class 0 ignored).

    Runs once per training run on the host where it needs to (the sparse gather has a data-dependent size).
    """
    masks64 = _reduce_masks(features_NHWC, masks_onehot_NHWC)  # (K, H, W, L) bool
    if mode == "dense":
        return _dense_prototypes(jnp.asarray(features_NHWC, jnp.float32), jnp.asarray(masks64))
    if mode == "sparse":
        return _sparse_prototypes(np.asarray(features_NHWC, np.float32), masks64)
    raise LabelingError(f"prototype mode must be 'dense' or 'sparse', got {mode!r}")


@jax.jit
def _dense_prototypes(features_NHWC, masks64_NHWL) -> DensePrototypes:
    m = masks64_NHWL.astype(jnp.float32)  # (K, H, W, L)
    sums_KLC = jnp.einsum("khwl,khwc->klc", m, features_NHWC, precision=_PRECISION)
    counts_KL = m.sum(axis=(1, 2))
    # Per-shot masked mean; a shot without the class contributes a zero vector and no count.
    means_KLC = jnp.where(counts_KL[..., None] > 0, sums_KLC / jnp.maximum(counts_KL, 1.0)[..., None], 0.0)
    n_shots_L = (counts_KL > 0).sum(axis=0).astype(jnp.float32)
    proto_LC = means_KLC.sum(axis=0) / (n_shots_L[:, None] + EPS)  # mean over the shots that contain c
    proto_LC = proto_LC / (jnp.linalg.norm(proto_LC, axis=-1, keepdims=True) + EPS)
    return DensePrototypes(vectors=proto_LC, present=n_shots_L > 0)


def _sparse_prototypes(features_NHWC: np.ndarray, masks64_NHWL: np.ndarray) -> SparsePrototypes:
    n_classes = masks64_NHWL.shape[-1]
    # np.nonzero walks its argument in C order: transposed to (L, K, H, W) that is class, shot, row, column.
    cls, k, y, x = np.nonzero(rearrange(masks64_NHWL, "n h w l -> l n h w"))
    keep = cls >= 1  # class 0 means "not annotated": its vectors would never be used (psp.py skips c = 0)
    v = features_NHWC[k[keep], y[keep], x[keep]]  # (N, C)
    v = v / (np.linalg.norm(v, axis=-1, keepdims=True) + np.float32(EPS))
    return SparsePrototypes(
        vectors=jnp.asarray(v, jnp.float32), classes=jnp.asarray(cls[keep], jnp.int32), n_classes=n_classes
    )


# ---------------------------------------------------------------------------------------------------------
# Pseudo-labels (every training step)


def _normalise_pixels(features_NHWC):
    """(B, H, W, C) -> (B, H*W, C) unit feature vectors (``F / (||F|| + 1e-8)``, float32)."""
    f = rearrange(features_NHWC.astype(jnp.float32), "b h w c -> b (h w) c")
    return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + EPS)


def _check_features(features_NHWC, n_channels: int) -> None:
    if features_NHWC.ndim != 4 or features_NHWC.shape[-1] != n_channels:
        raise LabelingError(
            f"features must be (B, H, W, {n_channels}) to match the prototypes, got {tuple(features_NHWC.shape)}"
        )


def cosine_scores(features_NHWC, protos: DensePrototypes, compat: bool = False):
    """(B, H, W, C) features -> (B, H, W, L) cosine similarity of each pixel to each dense prototype.

    With ``compat=False`` classes absent from every shot score ``-inf`` (they can never win an argmax); with
    ``compat=True`` they score exactly 0 like the original's zero prototypes (SPEC 5.1 bug 3).
    """
    if not isinstance(protos, DensePrototypes):
        raise LabelingError(f"cosine_scores needs DensePrototypes, got {type(protos).__name__}")
    _check_features(features_NHWC, protos.vectors.shape[-1])
    h = features_NHWC.shape[1]
    cos_BPL = jnp.einsum("bpc,lc->bpl", _normalise_pixels(features_NHWC), protos.vectors, precision=_PRECISION)
    if not compat:
        cos_BPL = jnp.where(protos.present, cos_BPL, -jnp.inf)
    return rearrange(cos_BPL, "b (h w) l -> b h w l", h=h)


def _dense_labels(features_NHWC, protos: DensePrototypes, compat: bool):
    """(B, H, W) int32: the first class of maximal cosine (torch.argmax and jnp.argmax agree on ties)."""
    return jnp.argmax(cosine_scores(features_NHWC, protos, compat), axis=-1).astype(jnp.int32)


def _top_k_last(x, k: int):
    """``lax.top_k`` over the last axis: values, indices (..., k) descending, lower index first on ties."""
    if k > _ROUNDS_TOPK_MAX:
        return jax.lax.top_k(x, k)
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    vals, pix = [], []
    for _ in range(k):
        i = jnp.argmax(x, axis=-1).astype(jnp.int32)  # first maximum: the lower index wins a tie
        vals.append(jnp.max(x, axis=-1))
        pix.append(i)
        x = jnp.where(ids == i[..., None], -jnp.inf, x)
    return jnp.stack(vals, axis=-1), jnp.stack(pix, axis=-1)


def _sparse_labels(features_NHWC, protos: SparsePrototypes, topk: int, cos_th, chunk: int | None):
    """(B, H, W) int32 sparse labels, the vectorised form of psp.py's per-sample, per-class loop (SPEC 1d).

    Per class the original keeps, for each pixel, the highest cosine among the (vector, pixel) top-k pairs of
    that class's vectors, zeroes values <= cos_th, and lets class c take a pixel whose value beats the running
    best strictly. That is a max over pairs per (class, pixel) -- a scatter-max -- followed by the first argmax
    over classes 1.. where the best value is > 0.
    """
    b, h, w, c = features_NHWC.shape
    p = h * w
    if not 1 <= topk <= p:
        raise LabelingError(f"topk must be in 1..{p} (pixels per sample), got {topk}")
    n_classes = protos.n_classes
    v_NC = protos.vectors.astype(jnp.float32)
    n = v_NC.shape[0]
    if n == 0 or n_classes < 2:  # no annotated pixel in any shot (or no class but 0): nothing is labelled
        return jnp.zeros((b, h, w), jnp.int32)
    fn_BPC = _normalise_pixels(features_NHWC)

    def top_pixels(v_nC):  # (n, C) -> values, pixel ids (B, n, topk): each vector's most similar pixels
        s_BnP = jnp.einsum("nc,bpc->bnp", v_nC, fn_BPC, precision=_PRECISION)
        return _top_k_last(s_BnP, topk)

    if chunk is None:
        chunk = max(1, _SPARSE_BLOCK_ELEMENTS // (b * p))
    n_chunks = math.ceil(n / chunk)
    if n_chunks == 1:
        val_BNk, pix_BNk = top_pixels(v_NC)
    else:
        size = math.ceil(n / n_chunks)  # equal chunks, at most n_chunks - 1 padded rows
        v_pad = jnp.pad(v_NC, ((0, n_chunks * size - n), (0, 0))).reshape(n_chunks, size, c)
        val, pix = jax.lax.map(top_pixels, v_pad)  # (n_chunks, B, size, topk)
        val_BNk = jnp.moveaxis(val, 0, 1).reshape(b, n_chunks * size, topk)[:, :n]
        pix_BNk = jnp.moveaxis(pix, 0, 1).reshape(b, n_chunks * size, topk)[:, :n]

    # Values <= cos_th (including every negative one) never beat the initial best of 0, so they become 0.
    kept_BNk = jnp.where(val_BNk > cos_th, val_BNk, 0.0)
    # Class 0 ("not annotated") never labels (psp.py skips it): the score has rows for classes 1.., and a
    # class-0 vector, should a caller build one, contributes nothing.
    cls_N = protos.classes.astype(jnp.int32)
    kept_BNk = jnp.where((cls_N >= 1)[None, :, None], kept_BNk, 0.0)
    row_N = jnp.maximum(cls_N - 1, 0)

    def scatter_max(pix_Nk, kept_Nk):  # one sample: (L-1, P) best kept cosine per (class, pixel)
        return jnp.zeros((n_classes - 1, p), jnp.float32).at[row_N[:, None], pix_Nk].max(kept_Nk)

    # vmap (not an iota batch index) makes the batch a scatter batching dimension, so a batch sharded over a
    # device mesh stays sharded instead of being gathered.
    score_BLP = jax.vmap(scatter_max)(pix_BNk, kept_BNk)
    best_BP = score_BLP.max(axis=1)
    label_BP = jnp.where(best_BP > 0, jnp.argmax(score_BLP, axis=1) + 1, 0)
    return label_BP.astype(jnp.int32).reshape(b, h, w)


def pseudo_label(
    features_NHWC,
    protos: DensePrototypes | SparsePrototypes,
    topk: int = 3,
    cos_th: float = 0.5,
    out_size: int = 256,
    compat: bool = False,
    chunk: int | None = None,
):
    """Pseudo-label generated samples from their features: (B, H, W, C) -> int32 (B, out_size, out_size).

    protos: :class:`DensePrototypes` (cosine argmax, SPEC 1c) or :class:`SparsePrototypes` (top-k per annotated
        vector with threshold, SPEC 1d); the prototype type picks the method at trace time.
    topk, cos_th: sparse only; each annotated vector labels its ``topk`` most similar pixels whose cosine is
        > ``cos_th``. ``cos_th`` is traced (changing it does not recompile).
    out_size: label size, an integer multiple of H; labels are enlarged by repetition (torch nearest).
    compat: dense only; ``True`` lets the zero prototypes of absent classes take part like the original.
    chunk: sparse only; annotated vectors per similarity block. ``None`` picks the largest block that keeps
        the (B, chunk, H*W) float32 similarities within 512 MiB (one block, no loop, when N is small); smaller
        chunks lower peak memory at the cost of a sequential ``lax.map``.

    Compiled once per (feature shape, prototype shapes/type, static options): the arguments are handed to one
    jitted function in a fixed form, so a defaulted and an explicit ``cos_th`` share the compiled code. Inside
    a caller's own jit it simply inlines.
    """
    return _pseudo_label_jit(
        features_NHWC, protos, cos_th, topk=topk, out_size=out_size, compat=compat, chunk=chunk
    )


@functools.partial(jax.jit, static_argnames=("topk", "out_size", "compat", "chunk"))
def _pseudo_label_jit(features_NHWC, protos, cos_th, *, topk, out_size, compat, chunk):
    if features_NHWC.ndim != 4:
        raise LabelingError(f"features must be (B, H, W, C), got shape {tuple(features_NHWC.shape)}")
    _, h, w, _ = features_NHWC.shape
    if h != w or out_size % h:
        raise LabelingError(f"out_size {out_size} must be an integer multiple of the square feature size {h}x{w}")
    if isinstance(protos, DensePrototypes):
        label_BHW = _dense_labels(features_NHWC, protos, compat)
    elif isinstance(protos, SparsePrototypes):
        _check_features(features_NHWC, protos.vectors.shape[-1])
        label_BHW = _sparse_labels(features_NHWC, protos, topk, cos_th, chunk)
    else:
        raise LabelingError(f"protos must be DensePrototypes or SparsePrototypes, got {type(protos).__name__}")
    scale = out_size // h
    return jnp.repeat(jnp.repeat(label_BHW, scale, axis=1), scale, axis=2)


def labels_to_onehot(labels_BHW, n_classes: int):
    """(B, H, W) integer labels -> (B, H, W, L) float32 one-hot (the encoder's input)."""
    return jax.nn.one_hot(labels_BHW, n_classes, dtype=jnp.float32)


def prototypes_state(protos: DensePrototypes | SparsePrototypes) -> dict[str, np.ndarray]:
    """A flat dict of numpy arrays (mode and class count included) that orbax restores without a target tree.

    The sparse vector count N differs per dataset, so a checkpoint cannot be restored into a fixed abstract
    tree; this form restores as plain arrays and :func:`prototypes_from_state` rebuilds the dataclass.
    """
    if isinstance(protos, DensePrototypes):
        return {"mode": np.asarray(0, np.int32), "vectors": np.asarray(protos.vectors),
                "present": np.asarray(protos.present)}
    if isinstance(protos, SparsePrototypes):
        return {"mode": np.asarray(1, np.int32), "vectors": np.asarray(protos.vectors),
                "classes": np.asarray(protos.classes), "n_classes": np.asarray(protos.n_classes, np.int32)}
    raise LabelingError(f"protos must be DensePrototypes or SparsePrototypes, got {type(protos).__name__}")


def prototypes_from_state(state) -> DensePrototypes | SparsePrototypes:
    """Inverse of :func:`prototypes_state`."""
    mode = int(np.asarray(state["mode"]))
    if mode == 0:
        return DensePrototypes(vectors=jnp.asarray(state["vectors"], jnp.float32),
                               present=jnp.asarray(state["present"], bool))
    if mode == 1:
        return SparsePrototypes(vectors=jnp.asarray(state["vectors"], jnp.float32),
                                classes=jnp.asarray(state["classes"], jnp.int32),
                                n_classes=int(np.asarray(state["n_classes"])))
    raise LabelingError(f"prototype state has unknown mode {mode} (0 = dense, 1 = sparse)")


# ---------------------------------------------------------------------------------------------------------
# Slow reference twins: straightforward numpy loops mirroring psp.py (compute_rep_vec(s), *_pseudo_labeling).


def _prototypes_reference(features_NHWC, masks_onehot_NHWC, mode: str = "dense"):
    """Per-class boolean-mask loops; returns (L, C) dense prototypes or a list of L (N_c, C) sparse arrays."""
    f = np.asarray(features_NHWC, np.float32)
    m = np.asarray(masks_onehot_NHWC)
    step = m.shape[1] // f.shape[1]
    m = m[:, ::step, ::step]
    n_shots, n_classes = f.shape[0], m.shape[-1]
    if mode == "dense":
        total = np.zeros((n_classes, f.shape[-1]), np.float32)
        count = np.zeros(n_classes, np.float32)
        for i in range(n_shots):
            for c in range(n_classes):
                sel = f[i][m[i, :, :, c] == 1]
                if len(sel):
                    total[c] += sel.mean(axis=0)
                    count[c] += 1
        proto = total / (count[:, None] + np.float32(EPS))
        return proto / (np.linalg.norm(proto, axis=-1, keepdims=True) + np.float32(EPS))
    vecs = []
    for c in range(n_classes):
        per_shot = []
        for i in range(n_shots):
            sel = f[i][m[i, :, :, c] == 1]
            per_shot.append(sel / (np.linalg.norm(sel, axis=-1, keepdims=True) + np.float32(EPS)))
        vecs.append(np.concatenate(per_shot, axis=0))
    return vecs


def _dense_label_reference(features_NHWC, proto_LC, present_L=None, out_size: int = 256) -> np.ndarray:
    """Per-sample cosine argmax; ``present_L`` given -> absent classes excluded (our default), else compat."""
    f = np.asarray(features_NHWC, np.float32)
    b, h, w, c = f.shape
    proto_LC = np.asarray(proto_LC, np.float32)
    out = np.zeros((b, h * w), np.int32)
    for i in range(b):
        fi = f[i].reshape(h * w, c).T  # (C, P)
        fn = fi / (np.linalg.norm(fi, axis=0, keepdims=True) + np.float32(EPS))
        cos = proto_LC @ fn  # (L, P)
        if present_L is not None:
            cos[~np.asarray(present_L, bool)] = -np.inf
        out[i] = np.argmax(cos, axis=0)
    s = out_size // h
    return out.reshape(b, h, w).repeat(s, axis=1).repeat(s, axis=2)


def _numpy_class_pairs(v_nC, fn_CP, topk: int):
    """One class of one sample in numpy: each vector's top-k pixels, all pairs sorted by value, descending."""
    sim = np.asarray(v_nC, np.float32).reshape(-1, fn_CP.shape[0]) @ fn_CP  # (N_c, P)
    # Each vector's top-k pixels; a stable sort puts the lower pixel first on ties (as lax.top_k).
    pix = np.argsort(-sim, axis=1, kind="stable")[:, :topk]
    val = np.take_along_axis(sim, pix, axis=1)
    order = np.argsort(-val.ravel(), kind="stable")  # all pairs, highest cosine first
    return val.ravel()[order], pix.ravel()[order]


def original_sparse_loop(fn_per_sample, vecs_per_class, class_pairs, topk: int, cos_th: float, side: int,
                         out_size: int) -> np.ndarray:
    """psp.py's sparse pseudo-labelling loop (psp.py:256-277), the one restatement of it in this repository.

    Per sample, per class c >= 1: ``class_pairs(vecs_per_class[c], fn_per_sample[i], topk)`` gives the
    (value, pixel) pairs of the class's top-k pixels, highest value first, as host numpy arrays; ``np.unique``
    keeps the best pair per pixel, values <= ``cos_th`` become 0 and class c takes the pixels where it beats the
    running best strictly. ``fn_per_sample`` (B unit-feature blocks of ``side * side`` pixels) and the vectors are
    in whatever layout and framework ``class_pairs`` computes with: numpy here (:func:`_sparse_label_reference`),
    a jitted device call or torch in the benchmark's original paths. Returns (B, out_size, out_size) int32.
    """
    p = side * side
    out = np.zeros((len(fn_per_sample), p), np.int32)
    for i in range(len(fn_per_sample)):
        label = np.zeros(p, np.int32)
        best = np.zeros(p, np.float32)
        for cls in range(1, len(vecs_per_class)):
            d = np.zeros(p, np.float32)
            if len(vecs_per_class[cls]):
                val, pix = class_pairs(vecs_per_class[cls], fn_per_sample[i], topk)
                uniq_pix, first = np.unique(pix, return_index=True)  # best pair per pixel
                uniq_val = val[first]
                d[uniq_pix] = np.where(uniq_val > cos_th, uniq_val, 0.0)
            update = best < d
            label[update] = cls
            best = np.maximum(best, d)
        out[i] = label
    s = out_size // side
    return out.reshape(-1, side, side).repeat(s, axis=1).repeat(s, axis=2)


def _sparse_label_reference(
    features_NHWC, vecs_per_class, topk: int = 3, cos_th: float = 0.5, out_size: int = 256
) -> np.ndarray:
    """psp.py's sparse loop in numpy: per sample, per class c >= 1: top-k pixels per vector, best pair per pixel,
    update (:func:`original_sparse_loop` with a numpy class step)."""
    f = np.asarray(features_NHWC, np.float32)
    b, h, w, c = f.shape
    fn_per_sample = []
    for i in range(b):
        fi = f[i].reshape(h * w, c).T
        fn_per_sample.append(fi / (np.linalg.norm(fi, axis=0, keepdims=True) + np.float32(EPS)))  # (C, P)
    return original_sparse_loop(fn_per_sample, vecs_per_class, _numpy_class_pairs, topk, cos_th, h, out_size)
