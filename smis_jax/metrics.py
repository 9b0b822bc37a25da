"""Label self-consistency: does the synthesised image carry the layout it was asked for?

For each held-out mask: encoder (eval mode) + latent_avg -> generator (the checkpoint's fixed noise) -> the
output's own 64x64 features -> pseudo-labels with the run's prototypes -> IoU against the input mask, per class and
mean. Dense domains score every class that occurs in the masks or the predictions; sparse domains ignore class 0
("not annotated"). Training logs it every ``eval_every`` steps; ``python -m smis_jax.evaluate`` reports it.

Where the domain has ground truth (the built-in domains: exact dense masks and an oracle segmenter),
``synthesis_truth`` scores the same synthesised images against it: training logs it beside self-consistency, the
curve that shows whether the encoder has converged when the run's labeller misreads its images.

Also the kernel distance of KID (``kernel_distance``), which the GAN trainer's quality measure uses.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import labelers, labeling
from smis_jax.nets.psp import EncoderConfig, GradualStyleEncoder, codes_and_offsets, reduce_onehot
from smis_jax.nets.stylegan2 import Generator, GeneratorConfig

__all__ = ["confusion", "iou_from_confusion", "kernel_distance", "self_consistency", "synthesis_truth"]


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(L, L) counts: rows = target class, columns = predicted class."""
    idx = target.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def kernel_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The kernel distance of KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the
    squared MMD between feature sets ``x`` (m, d) and ``y`` (n, d) under the cubic polynomial kernel
    ``k(a, b) = (a . b / d + 1) ** 3``, over the whole sets (no subsets), in float64. 0 in expectation when both come
    from one distribution (it can then be slightly negative); larger the further apart they are."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"kernel_distance: expected (m, d) and (n, d) features with m, n >= 2, got {x.shape} and "
                         f"{y.shape}")
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def iou_from_confusion(conf: np.ndarray, ignore_background: bool) -> dict[str, Any]:
    """Per-class IoU over the classes with a non-empty union, and their mean."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    classes = [c for c in range(conf.shape[0]) if union[c] > 0 and not (ignore_background and c == 0)]
    per_class = {int(c): float(tp[c] / union[c]) for c in classes}
    miou = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"miou": miou, "per_class": per_class}


def _encode(enc_config: EncoderConfig, enc_vars, onehot, sparse: bool):
    """One-hot masks at 256 -> the encoder's input -> (codes, offsets or None), eval mode. Traceable."""
    onehot = reduce_onehot(onehot, enc_config.input_size, sparse)
    return codes_and_offsets(enc_config, GradualStyleEncoder(enc_config).apply(enc_vars, onehot, False))


def _padded_batches(masks: np.ndarray, batch_size: int):
    """(start, chunk, chunk padded to batch_size with its last mask): one compiled shape for every batch."""
    for start in range(0, len(masks), batch_size):
        chunk = masks[start:start + batch_size]
        yield start, chunk, np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])


@partial(jax.jit, static_argnames=("enc_config", "gen_config"))
def _labels_of_synthesis(enc_config: EncoderConfig, gen_config: GeneratorConfig, enc_vars, gen_params, noises,
                         latent_avg, protos, onehot):
    codes, offsets = _encode(enc_config, enc_vars, onehot, not labelers.as_labeler(protos).dense)
    return labelers.label_latents(gen_config, gen_params, codes + latent_avg, noises, protos, out_size=256,
                                  offsets=offsets)


def self_consistency(enc_config: EncoderConfig, enc_vars, gen_config: GeneratorConfig, gen_params, noises,
                     latent_avg, protos, masks: np.ndarray, batch_size: int = 4) -> dict[str, Any]:
    """masks (N, 256, 256) class ids -> {'miou', 'per_class', 'n_masks'}.

    ``noises``: the generator's fixed noise buffers (the result is deterministic). ``protos``: Dense or Sparse
    prototypes; sparse masks are scored without class 0. Batches have a fixed size (the last one padded).
    """
    masks = np.asarray(masks)
    n_classes = enc_config.input_nc
    sparse = not labelers.as_labeler(protos).dense
    conf = np.zeros((n_classes, n_classes), np.int64)
    for _, chunk, padded in _padded_batches(masks, batch_size):
        onehot = labeling.labels_to_onehot(jnp.asarray(padded), n_classes)
        pred = np.asarray(_labels_of_synthesis(enc_config, gen_config, enc_vars, gen_params, list(noises),
                                               latent_avg, protos, onehot))[: len(chunk)]
        conf += confusion(pred, chunk, n_classes)
    out = iou_from_confusion(conf, ignore_background=sparse)
    out["n_masks"] = int(len(masks))
    return out


@partial(jax.jit, static_argnames=("enc_config", "gen_config", "sparse"))
def _images_of_synthesis(enc_config: EncoderConfig, gen_config: GeneratorConfig, sparse: bool, enc_vars, gen_params,
                         noises, latent_avg, onehot):
    codes, offsets = _encode(enc_config, enc_vars, onehot, sparse)
    image, _ = Generator(gen_config).apply(gen_params, codes + latent_avg, noises, offsets=offsets)
    return image


def synthesis_truth(enc_config: EncoderConfig, enc_vars, gen_config: GeneratorConfig, gen_params, noises, latent_avg,
                    masks: np.ndarray, truth: np.ndarray, segment: Callable[[np.ndarray], np.ndarray],
                    n_truth_classes: int, sparse: bool = False, batch_size: int = 4) -> dict[str, Any]:
    """Synthesis on ground truth: masks (N, 256, 256) as the encoder reads them -> images (the same encoder, codes,
    stored noise and offsets as :func:`self_consistency`) -> ``segment`` (images (B, H, W, 3) in [-1, 1] -> class ids
    (B, h, w), an oracle) -> IoU against ``truth`` (N, h, w), dense class ids below ``n_truth_classes`` (every class
    counts, as in the paper's protocol).

    Returns {'miou', 'per_class' (by class id), 'accuracy', 'n_masks'}; on the built-in domains exactly
    ``groundtruth.evaluate``'s ``synthesis`` numbers for the same weights."""
    masks, truth = np.asarray(masks), np.asarray(truth)
    if len(masks) != len(truth):
        raise ValueError(f"synthesis_truth: {len(masks)} masks but {len(truth)} ground-truth maps")
    conf = np.zeros((n_truth_classes, n_truth_classes), np.int64)
    for start, chunk, padded in _padded_batches(masks, batch_size):
        onehot = labeling.labels_to_onehot(jnp.asarray(padded), enc_config.input_nc)
        image = np.asarray(_images_of_synthesis(enc_config, gen_config, bool(sparse), enc_vars, gen_params,
                                                list(noises), latent_avg, onehot))[: len(chunk)]
        conf += confusion(np.asarray(segment(image)), truth[start:start + len(chunk)], n_truth_classes)
    out = iou_from_confusion(conf, ignore_background=False)
    out["accuracy"] = float(np.trace(conf) / max(conf.sum(), 1))
    out["n_masks"] = int(len(masks))
    return out
