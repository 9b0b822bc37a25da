"""Benchmark inputs: generator weights at the real shapes, samples (z -> W+ -> image and 64x64 features) and
prototypes from generated shots with random masks."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from smis_jax import labelers, labeling
from smis_jax.bench.presets import N_SHOTS, BenchError
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, GeneratorConfig, init_params, make_noise

__all__ = ["cast_floats", "normal", "z_and_noise", "sample", "make_prototypes", "make_labeler",
           "generator_dtype_report"]

# Inputs are built by a few whole-tree jits or in numpy: every distinct eager op is a compile of its own, and
# hundreds of them (one per parameter leaf) cost more than the benchmarked programs at the tiny shapes.

@partial(jax.jit, static_argnums=(1,))
def cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)



def normal(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def z_and_noise(gcfg: GeneratorConfig, key, batch: int, until_res: int | None, dtype):
    """The latent z (B, D) and noise list (rosinality order, up to ``until_res``) that ``key`` draws."""
    key_z, key_noise = jax.random.split(key)
    z = jax.random.normal(key_z, (batch, gcfg.style_dim)).astype(dtype)
    return z, [n.astype(dtype) for n in make_noise(gcfg, key_noise, batch, until_res)]


def sample(gcfg: GeneratorConfig, params, key, batch: int, until_res: int | None, dtype):
    """z ~ N(0, I) -> mapping -> W (broadcast to W+) -> generator with fresh noise, all in ``dtype``.
    Returns (image (B, size, size, 3) or None, features (B, 64, 64, C), w_plus (B, S, D))."""
    z, noise = z_and_noise(gcfg, key, batch, until_res, dtype)
    g = Generator(gcfg)
    w = g.apply(params, z, method=Generator.mapping)
    w_plus = jnp.broadcast_to(w[:, None, :], (batch, gcfg.n_latent, gcfg.style_dim))
    image, features = g.apply(params, w_plus, noise, until_res)
    return image, features, w_plus


def make_prototypes(gcfg: GeneratorConfig, params, mode: str, n_classes: int, key: jax.Array,
                    vectors_per_class: int = 9):
    """Prototypes from five generated shots with random masks (see the module docstring), float32.

    dense -> DensePrototypes (L, C); sparse -> SparsePrototypes with ``vectors_per_class`` vectors for each class
    1..L-1 (fewer if the shots have too few pixels)."""
    key_shots, key_mask = jax.random.split(key)
    _, feats, _ = jax.jit(partial(sample, gcfg, batch=N_SHOTS, until_res=FEATURE_RES, dtype=jnp.float32))(
        params, key_shots)
    return labeling.prototypes(np.asarray(feats), _random_masks(key_mask, mode, n_classes, vectors_per_class), mode)


def make_labeler(gcfg: GeneratorConfig, params, mode: str, n_classes: int, key: jax.Array, kind: str,
                 vectors_per_class: int = 9):
    """:func:`make_prototypes`' shots and masks, a labeller of ``kind`` (:mod:`smis_jax.labelers`) fitted on
    them ('paper' gives exactly make_prototypes' prototypes, wrapped)."""
    key_shots, key_mask = jax.random.split(key)
    taps = labelers.taps_of(kind, gcfg)
    z, noise = z_and_noise(gcfg, key_shots, N_SHOTS, FEATURE_RES, jnp.float32)

    @jax.jit
    def features(params, z, noise):
        w = Generator(gcfg).apply(params, z, method=Generator.mapping)
        w_plus = jnp.broadcast_to(w[:, None, :], (N_SHOTS, gcfg.n_latent, gcfg.style_dim))
        return labelers.label_features(gcfg, params, w_plus, noise, taps)

    onehot = _random_masks(key_mask, mode, n_classes, vectors_per_class)
    return labelers.fit(kind, np.asarray(features(params, z, noise)), onehot, mode).replace(taps=taps)


def _random_masks(key_mask, mode: str, n_classes: int, vectors_per_class: int) -> np.ndarray:
    """(N_SHOTS, 64, 64, L) one-hot: a random Voronoi partition (dense) or random annotated spots (sparse)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_mask))[-1])
    h = w = FEATURE_RES
    if mode == "dense":
        yy, xx = np.mgrid[:h, :w]
        ids = np.empty((N_SHOTS, h, w), np.int64)
        for k in range(N_SHOTS):  # a Voronoi partition: every class owns the pixels nearest its seed
            seeds = rng.integers(0, h, size=(n_classes, 2))
            d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
            ids[k] = np.argmin(d, axis=-1)
    elif mode == "sparse":
        ids = np.zeros(N_SHOTS * h * w, np.int64)
        per_class = min(vectors_per_class, (ids.size - 1) // max(n_classes - 1, 1))
        spots = rng.permutation(ids.size)[: per_class * (n_classes - 1)]
        ids[spots] = np.repeat(np.arange(1, n_classes), per_class)
        ids = ids.reshape(N_SHOTS, h, w)
    else:
        raise BenchError(f"mode must be 'dense' or 'sparse', got {mode!r}")
    return np.eye(n_classes, dtype=np.float32)[ids]  # (K, 64, 64, L)


def generator_dtype_report(gcfg: GeneratorConfig, dtype) -> dict[str, Any]:
    """Does the generator run in ``dtype`` end to end? Lists every conv/matmul of its jaxpr (mapping included,
    params and inputs cast to ``dtype``) whose output has another dtype."""
    params = jax.eval_shape(partial(init_params, gcfg), jax.random.key(0))
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), params)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def fn(params, key):
        return sample(gcfg, params, key, 1, None, dtype)[:2]

    others, total = [], 0

    def walk(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                total += 1
                if eqn.outvars[0].aval.dtype != dtype:
                    others.append(f"{eqn.primitive.name}->{eqn.outvars[0].aval.dtype}")
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(params, key).jaxpr)
    return {"end_to_end": not others, "convs_and_matmuls": total, "in_other_dtypes": sorted(set(others))}
