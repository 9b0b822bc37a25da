"""GAN inversion of the K annotated images into W+ (SPEC.md 1a), all images in one jit-compiled optimisation.

The original inverts one image at a time: W+ ``(1, S, D)`` from ``latent_avg + randn/sqrt(D)``, Ranger with lr 1,
2000 steps, loss ``1.0*MSE + 0.8*LPIPS(alex)`` on the generator output average-pooled to 256, fresh noise every
step. Here the K images share one W+ tensor ``(K, S, D)`` and the loss is the *sum* of the per-image losses, so each
image's gradient is exactly its own; Ranger centralises each image's gradient over its own ``(S, D)`` and every other
Ranger operation is element-wise, so each trajectory equals a separate run. Steps run in jitted chunks (``lax.scan``)
with the state donated.

Fixes over the original (SPEC.md 5.1 bug 4): per image we keep the codes that *achieved* the best loss (the original
stores the post-step codes under the pre-step loss, and only checks every 50 steps).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smis_jax import interrupt
from smis_jax.files import savez_atomic
from smis_jax.nets import lpips as lpips_lib, ops
from smis_jax.nets.stylegan2 import Generator, GeneratorConfig, LoadedGenerator, make_sample_noise
from smis_jax.optim import ranger

__all__ = ["InversionResult", "invert", "invert_cached", "read_cache", "cache_settings", "image_loss"]


class InversionResult(NamedTuple):
    w_plus: np.ndarray  # (K, S, D): per image, the codes with the lowest loss seen
    loss: np.ndarray  # (K,): that loss
    final_loss: np.ndarray  # (K,): the loss at the last step
    history: np.ndarray  # (steps, K): loss per step


def image_loss(lpips_params, image_NHWC, target_NHWC, l2_lambda: float, lpips_lambda: float) -> jax.Array:
    """Per-image ``l2*MSE + lpips*LPIPS`` after pooling the image to the target's size: (K,)."""
    pooled = ops.adaptive_avg_pool(image_NHWC, target_NHWC.shape[1:3])
    mse = jnp.mean((pooled - target_NHWC) ** 2, axis=(1, 2, 3))
    loss = l2_lambda * mse
    if lpips_lambda:
        loss = loss + lpips_lambda * lpips_lib.lpips_distance(lpips_params, pooled, target_NHWC)
    return loss


class _Carry(NamedTuple):
    w_plus: jax.Array  # (K, S, D)
    opt_state: Any
    best_w: jax.Array  # (K, S, D)
    best_loss: jax.Array  # (K,)


@partial(jax.jit, static_argnames=("config", "n_steps", "lpips_lambda"), donate_argnums=(1,))
def _run_chunk(config: GeneratorConfig, carry: _Carry, gen_params, lpips_params, targets, keys_K, first_step, lr,
               l2_lambda, n_steps: int, lpips_lambda: float):
    tx = ranger(lr, gc_axes=0)
    generator = Generator(config)

    def loss_fn(w_plus, noise):
        image, _ = generator.apply(gen_params, w_plus, noise)
        per_image = image_loss(lpips_params, image, targets, l2_lambda, lpips_lambda)
        return jnp.sum(per_image), per_image

    def step(carry: _Carry, t):
        # Image k's noise depends only on its key and the step: a batched run draws what K separate runs would.
        noise = make_sample_noise(config, jax.vmap(lambda kk: jax.random.fold_in(kk, t))(keys_K))
        (_, per_image), grads = jax.value_and_grad(loss_fn, has_aux=True)(carry.w_plus, noise)
        better = per_image < carry.best_loss
        best_w = jnp.where(better[:, None, None], carry.w_plus, carry.best_w)  # the codes that achieved it
        best_loss = jnp.where(better, per_image, carry.best_loss)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.w_plus)
        w_plus = optax.apply_updates(carry.w_plus, updates)
        return _Carry(w_plus, opt_state, best_w, best_loss), per_image

    return jax.lax.scan(step, carry, first_step + jnp.arange(n_steps))


def initial_codes(generator: LoadedGenerator, keys_K: jax.Array) -> jax.Array:
    """``latent_avg + randn/sqrt(D)`` per image, from each image's key: (K, S, D)."""
    c = generator.config
    noise = jax.vmap(lambda kk: jax.random.normal(kk, (c.n_latent, c.style_dim)))(keys_K)
    return generator.truncation_latent()[None, None, :] + noise / np.sqrt(c.style_dim)


def invert(generator: LoadedGenerator, lpips_params, targets_NHWC, key: jax.Array | None = None, steps: int = 2000,
           lr: float = 1.0, l2_lambda: float = 1.0, lpips_lambda: float = 0.8, chunk: int = 50,
           on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
           keys: jax.Array | None = None) -> InversionResult:
    """Invert K images ``targets_NHWC (K, 256, 256, 3)`` in [-1, 1] into W+ ``(K, S, D)``.

    Randomness: image k uses its own key (``keys[k]``, default ``split(key, K)[k]``) for its starting codes
    (``latent_avg + randn/sqrt(D)``; ``truncation_latent()`` when the checkpoint has no latent_avg) and its
    per-step noise, so inverting images together or one by one with the same keys gives the same trajectories.
    ``lpips_params`` may be None when ``lpips_lambda`` is 0. ``on_chunk(step, losses (K,), best (K,))`` runs
    after every ``chunk`` steps (progress display): the last step's loss and the best so far (the codes kept).
    """
    targets = jnp.asarray(targets_NHWC, jnp.float32)
    if targets.ndim != 4 or targets.shape[-1] != 3:
        raise ValueError(f"targets must be (K, H, W, 3), got {tuple(targets.shape)}")
    k = targets.shape[0]
    if keys is None:
        if key is None:
            raise ValueError("invert needs a key (or per-image keys)")
        keys = jax.random.split(key, k)
    if keys.shape[0] != k:
        raise ValueError(f"{keys.shape[0]} keys for {k} images")
    if lpips_lambda and lpips_params is None:
        raise ValueError("lpips_lambda > 0 needs LPIPS weights (smis_jax.load_lpips().params)")
    init_keys, noise_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)  # (K,) each
    start = initial_codes(generator, init_keys)
    carry = _Carry(start, ranger(lr, gc_axes=0).init(start), jnp.copy(start), jnp.full((k,), jnp.inf))  # donated
    history = []
    done = 0
    while done < steps:
        interrupt.check()  # Ctrl-C: stop between chunks
        n = min(chunk, steps - done)
        carry, losses = _run_chunk(generator.config, carry, generator.params, lpips_params, targets, noise_keys, done,
                                   jnp.float32(lr), jnp.float32(l2_lambda), n_steps=n, lpips_lambda=float(lpips_lambda))
        history.append(np.asarray(losses))
        done += n
        if on_chunk is not None:
            on_chunk(done, history[-1][-1], np.array(carry.best_loss))
    if not history:
        nan = np.full((k,), np.nan, np.float32)
        return InversionResult(np.asarray(start), nan, nan, np.zeros((0, k), np.float32))
    history = np.concatenate(history)
    return InversionResult(np.asarray(carry.best_w), np.asarray(carry.best_loss), history[-1], history)


@dataclass(frozen=True)
class CachedInversion:
    w_plus: np.ndarray  # (K, S, D)
    loss: np.ndarray  # (K,)
    reused: bool
    history: np.ndarray | None = None  # (steps, K) loss per step, when the cache holds it


def generator_fingerprint(generator: LoadedGenerator) -> str:
    """A short hash of the generator's config and weights: a cached inversion is reused only for the same G."""
    h = hashlib.sha256(json.dumps(generator.config.to_json(), sort_keys=True).encode())
    for leaf in jax.tree.leaves(generator.params):
        h.update(np.asarray(leaf).tobytes())
    if generator.latent_avg is not None:
        h.update(np.asarray(generator.latent_avg).tobytes())
    return h.hexdigest()[:16]


NOISE_MODE = "fresh-per-step"  # the original's: new noise buffers at every step, from the image's key


def cache_settings(generator: LoadedGenerator, targets_NHWC, key: jax.Array | None = None,
                   keys: jax.Array | None = None, **invert_kwargs) -> list[dict[str, Any]]:
    """Per image, everything that determines its inverted codes, as the cache records it: the generator's
    fingerprint, a hash of the image's pixels, the image's own key (the run's seed reaches it), the step count,
    learning rate, loss weights and noise mode (:func:`invert`'s defaults where ``invert_kwargs`` has none).
    ``chunk`` and ``on_chunk`` change nothing but progress and are left out."""
    defaults = {name: p.default for name, p in inspect.signature(invert).parameters.items()}
    targets = np.asarray(targets_NHWC, np.float32)
    if keys is None:
        if key is None:
            raise ValueError("cache_settings needs a key (or per-image keys)")
        keys = jax.random.split(key, len(targets))
    key_data = np.asarray(jax.random.key_data(keys) if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
                          else keys)
    common = {"generator": generator_fingerprint(generator),
              "steps": int(invert_kwargs.get("steps", defaults["steps"])),
              "lr": float(invert_kwargs.get("lr", defaults["lr"])),
              "l2_lambda": float(invert_kwargs.get("l2_lambda", defaults["l2_lambda"])),
              "lpips_lambda": float(invert_kwargs.get("lpips_lambda", defaults["lpips_lambda"])),
              "noise": NOISE_MODE}
    return [{**common, "image_sha256": hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest()[:16],
             "key": np.ascontiguousarray(k).tobytes().hex()} for t, k in zip(targets, key_data)]


def invert_cached(cache_dir: str | Path, names: Sequence[str], generator: LoadedGenerator, lpips_params,
                  targets_NHWC, key: jax.Array, overwrite: bool = False, log: Callable[[str], None] = print,
                  **invert_kwargs) -> CachedInversion:
    """:func:`invert`, cached per image as ``cache_dir/<name>.npz`` (codes, loss, history and the image's
    :func:`cache_settings`).

    Reuses the cache only if every image has an entry made with the same settings (generator, image content, key,
    steps, learning rate, loss weights, noise mode), unless ``overwrite``.
    """
    cache = Path(cache_dir)
    settings = cache_settings(generator, targets_NHWC, key, **invert_kwargs)
    steps = settings[0]["steps"] if settings else invert_kwargs.get("steps", 2000)
    if not overwrite:
        cached = read_cache(cache, names, settings, log)
        if cached is not None:
            log(f"reusing cached inversions in {cache} (--overwrite-inversion recomputes them)")
            return cached
    files = [cache / f"{name}.npz" for name in names]
    log(f"inverting {len(names)} image(s) for {steps} steps (cached in {cache})")
    result = invert(generator, lpips_params, targets_NHWC, key, **invert_kwargs)
    cache.mkdir(parents=True, exist_ok=True)
    for k, (f, w, loss) in enumerate(zip(files, result.w_plus, result.loss)):
        savez_atomic(f, w_plus=w, loss=loss, steps=settings[k]["steps"], fingerprint=settings[k]["generator"],
                     settings=json.dumps(settings[k], sort_keys=True), history=result.history[:, k])
    return CachedInversion(result.w_plus, result.loss, False, result.history)


def read_cache(cache_dir: str | Path, names: Sequence[str], settings: Sequence[dict[str, Any]],
               log: Callable[[str], None] = print) -> CachedInversion | None:
    """The cached inversions of ``names`` if every one is there, intact and made with exactly ``settings``
    (:func:`cache_settings`, one per name); otherwise None (saying why when files exist but cannot be used)."""
    cache = Path(cache_dir)
    files = [cache / f"{name}.npz" for name in names]
    if len(settings) != len(names):
        raise ValueError(f"{len(settings)} settings for {len(names)} names")
    if not all(f.is_file() for f in files):
        return None
    entries, damaged = [], []
    for f in files:
        try:
            entries.append(_read_entry(f))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            damaged.append(f"{f.name} ({type(e).__name__}: {e})")
    if damaged:
        log(f"cached inversions in {cache} are damaged: {'; '.join(damaged)}; recomputing")
        return None
    changed = []
    for name, entry, want in zip(names, entries, settings):
        have = json.loads(str(entry["settings"])) if "settings" in entry else {}
        diff = [k for k in want if have.get(k) != want[k]]
        if diff:
            changed.append(f"{name}: {', '.join('image content' if k == 'image_sha256' else k for k in diff)}")
    if changed:
        log(f"cached inversions in {cache} were made with other settings ({'; '.join(changed)}); recomputing")
        return None
    history = np.stack([e["history"] for e in entries], 1) if all("history" in e for e in entries) else None
    return CachedInversion(np.stack([e["w_plus"] for e in entries]),
                           np.array([float(e["loss"]) for e in entries], np.float32), True, history)


def _read_entry(path: Path) -> dict[str, np.ndarray]:
    """Every array of one cache file, read now (a truncated file fails here, not later)."""
    with np.load(path) as z:
        entry = {k: z[k] for k in z.files}
    missing = {"w_plus", "loss", "steps", "fingerprint"} - set(entry)
    if missing:
        raise KeyError(f"no {', '.join(sorted(missing))}")
    return entry
