"""Batched GAN inversion: per-image independence, best-code tracking, the on-disk cache.

The pieces (generator, LPIPS, Ranger) have their own golden parity tests; here we check what the batching and
bookkeeping add. The golden generator has random weights, so its images are far from photos: losses are large and
with lr 1 the optimisation diverges after the first step, which makes "keep the best codes" observable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smis_jax import data
from smis_jax.inversion import generator_fingerprint, initial_codes, invert, invert_cached
from smis_jax.io import load_generator, load_lpips
from smis_jax.nets import stylegan2

STEPS = 6


@pytest.fixture(scope="module")
def generator(golden):
    return load_generator(golden / "stylegan2_tiny128.pt")


@pytest.fixture(scope="module")
def lpips_params():
    return load_lpips().params


@pytest.fixture(scope="module")
def targets(samples):
    names = ["0", "1"]
    return np.stack([data.read_image(samples / "CelebAMask-HQ" / "train" / "images" / f"{n}.jpg") for n in names])


@pytest.fixture(scope="module")
def keys():
    return jax.random.split(jax.random.key(3), 2)


@pytest.fixture(scope="module")
def batched(generator, lpips_params, targets, keys):
    return invert(generator, lpips_params, targets, keys=keys, steps=STEPS, chunk=STEPS, lr=1e-3)


def test_batched_run_equals_separate_runs(generator, lpips_params, targets, keys, batched):
    # Each image's loss and gradient are its own (the total is a sum) and Ranger centralises per image, so a
    # two-image run must follow the two one-image runs. Float32 rounding differs with the batch shape only.
    for k in range(2):
        alone = invert(generator, lpips_params, targets[k:k + 1], keys=keys[k:k + 1], steps=STEPS, chunk=STEPS,
                       lr=1e-3)
        np.testing.assert_allclose(batched.history[:, k], alone.history[:, 0], rtol=1e-4)
        np.testing.assert_allclose(batched.w_plus[k], alone.w_plus[0], rtol=1e-4, atol=1e-4)


def test_loss_falls_and_best_is_tracked(batched):
    assert batched.history.shape == (STEPS, 2)
    assert np.all(batched.history[-1] < batched.history[0])  # a small lr descends even on random weights
    np.testing.assert_allclose(batched.loss, batched.history.min(axis=0), rtol=1e-6)


def test_diverging_run_keeps_the_codes_that_achieved_the_best_loss(generator, lpips_params, targets, keys):
    # lr 1 (what inversion uses on real generators) diverges here: the best loss is the one at step 0, so the
    # codes kept must be the starting codes, not the ones after the first update (the original's bug).
    result = invert(generator, lpips_params, targets, keys=keys, steps=STEPS, chunk=STEPS, lr=1.0)
    assert np.all(result.history[0] < result.history[1:].min(axis=0))
    init_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)[0]
    np.testing.assert_array_equal(result.w_plus, np.asarray(initial_codes(generator, init_keys)))
    np.testing.assert_allclose(result.loss, result.history[0], rtol=1e-6)


def test_start_is_latent_avg_plus_scaled_noise(generator, keys):
    codes = np.asarray(initial_codes(generator, keys))
    c = generator.config
    assert codes.shape == (2, c.n_latent, c.style_dim)
    offset = codes - np.asarray(generator.latent_avg)
    assert abs(offset.std() * np.sqrt(c.style_dim) - 1.0) < 0.1  # randn / sqrt(D)


def test_cache_is_reused_only_for_the_same_generator_and_steps(generator, targets, keys, tmp_path):
    kwargs = dict(steps=2, chunk=2, lr=1e-3, lpips_lambda=0.0)
    logs = []
    first = invert_cached(tmp_path, ["0", "1"], generator, None, targets, keys[0], log=logs.append, **kwargs)
    assert not first.reused and sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "1.npz"]
    again = invert_cached(tmp_path, ["0", "1"], generator, None, targets, keys[0], log=logs.append, **kwargs)
    assert again.reused and "reusing" in logs[-1]
    np.testing.assert_array_equal(again.w_plus, first.w_plus)
    redo = invert_cached(tmp_path, ["0", "1"], generator, None, targets, keys[0], log=logs.append, overwrite=True,
                         **kwargs)
    assert not redo.reused
    seen = len(logs)
    more = invert_cached(tmp_path, ["0", "1"], generator, None, targets, keys[0], log=logs.append,
                         **{**kwargs, "steps": 3})
    assert not more.reused and any("another generator or step count" in m for m in logs[seen:])
    other = stylegan2.LoadedGenerator(generator.config, generator.params, generator.noises,
                                      latent_avg=generator.latent_avg + 1.0)
    assert generator_fingerprint(other) != generator_fingerprint(generator)


def test_lpips_weight_required(generator, targets, keys):
    with pytest.raises(ValueError, match="LPIPS weights"):
        invert(generator, None, targets, keys=keys, steps=1, lpips_lambda=0.8)
