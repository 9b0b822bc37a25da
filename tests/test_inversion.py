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
from smis_jax.inversion import (cache_settings, generator_fingerprint, image_loss, initial_codes, invert, invert_cached,
                                read_cache)
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


def test_each_image_follows_its_own_trajectory(generator, lpips_params, targets, keys, batched, samples):
    # Each image's loss and gradient are its own (the total is a sum) and Ranger centralises per image, so what
    # image 0 goes through cannot depend on the image beside it: swap image 1 for another photo with another key
    # and image 0's losses and codes stay the same. (Inverting alone is the same computation with K=1; testing
    # it that way compiled a second program, 40 s on 2 cores, for no more coverage.)
    other_target = data.read_image(samples / "CelebAMask-HQ" / "train" / "images" / "10.jpg")[None]
    other = invert(generator, lpips_params, np.concatenate([targets[:1], other_target]),
                   keys=jnp.stack([keys[0], jax.random.key(11)]), steps=STEPS, chunk=STEPS, lr=1e-3)
    np.testing.assert_allclose(other.history[:, 0], batched.history[:, 0], rtol=1e-6)
    np.testing.assert_allclose(other.w_plus[0], batched.w_plus[0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(other.history[:, 1], batched.history[:, 1])  # image 1 really changed


def test_loss_falls_and_best_is_tracked(batched):
    assert batched.history.shape == (STEPS, 2)
    assert np.all(batched.history[-1] < batched.history[0])  # a small lr descends even on random weights
    np.testing.assert_allclose(batched.loss, batched.history.min(axis=0), rtol=1e-6)


def test_returned_codes_are_the_best_steps_codes(generator, lpips_params, targets, keys, batched):
    # Re-render the returned codes with the noise of the step that scored best (image k's noise at step t is drawn
    # from fold_in(its noise key, t)): the loss must be the reported best, and the codes must have moved.
    best_step = batched.history.argmin(axis=0)  # (K,)
    init_keys, noise_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    step_keys = jnp.stack([jax.random.fold_in(noise_keys[k], int(t)) for k, t in enumerate(best_step)])
    noise = stylegan2.make_sample_noise(generator.config, step_keys)
    image, _ = stylegan2.Generator(generator.config).apply(generator.params, jnp.asarray(batched.w_plus), noise)
    loss = np.asarray(image_loss(lpips_params, image, jnp.asarray(targets), 1.0, 0.8))
    np.testing.assert_allclose(loss, batched.loss, rtol=1e-5)
    assert not np.allclose(batched.w_plus, np.asarray(initial_codes(generator, init_keys)))


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


def test_cache_is_reused_only_for_the_same_generator_and_steps(generator, lpips_params, targets, keys, tmp_path,
                                                              batched):
    # The batched run's settings: the program it compiled serves every call here (a chunk of STEPS steps).
    kwargs = dict(steps=STEPS, chunk=STEPS, lr=1e-3, keys=keys)
    logs = []
    first = invert_cached(tmp_path, ["0", "1"], generator, lpips_params, targets, None, log=logs.append, **kwargs)
    assert not first.reused and sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "1.npz"]
    np.testing.assert_array_equal(first.w_plus, batched.w_plus)
    again = invert_cached(tmp_path, ["0", "1"], generator, None, targets, None, log=logs.append, **kwargs)
    assert again.reused and "reusing" in logs[-1]  # no LPIPS weights needed: nothing is computed
    np.testing.assert_array_equal(again.w_plus, first.w_plus)
    np.testing.assert_array_equal(again.history, first.history)
    redo = invert_cached(tmp_path, ["0", "1"], generator, lpips_params, targets, None, log=logs.append,
                         overwrite=True, **kwargs)
    assert not redo.reused
    seen = len(logs)
    longer = cache_settings(generator, targets, keys=keys, steps=2 * STEPS, lr=1e-3)
    assert read_cache(tmp_path, ["0", "1"], longer, log=logs.append) is None  # another step count
    assert any("other settings (0: steps; 1: steps)" in m for m in logs[seen:])
    other = stylegan2.LoadedGenerator(generator.config, generator.params, generator.noises,
                                      latent_avg=generator.latent_avg + 1.0)
    assert generator_fingerprint(other) != generator_fingerprint(generator)
    seen = len(logs)
    theirs = invert_cached(tmp_path, ["0", "1"], other, lpips_params, targets, None, log=logs.append, **kwargs)
    assert not theirs.reused and any("other settings (0: generator; 1: generator)" in m for m in logs[seen:])
    mine, others = (cache_settings(g, targets, keys=keys, steps=STEPS, lr=1e-3) for g in (generator, other))
    assert read_cache(tmp_path, ["0", "1"], others, log=logs.append) is not None  # now cached for that G
    assert read_cache(tmp_path, ["0", "1"], mine, log=logs.append) is None


@pytest.mark.parametrize("change, named", [
    (dict(lr=0.5), "lr"), (dict(l2_lambda=2.0), "l2_lambda"), (dict(lpips_lambda=0.8), "lpips_lambda"),
    (dict(steps=1), "steps"), (dict(key=jax.random.key(1)), "key"), (dict(image=1), "image content"),
])
def test_cache_key_covers_every_setting_that_determines_the_codes(generator, targets, tmp_path, change, named):
    """A cache made with one setting changed is not reused, and the log names the setting (steps=0: the starting
    codes, nothing compiled). The image content is hashed, so a shot replaced under the same name is redone."""
    base = dict(steps=0, lr=1.0, l2_lambda=1.0, lpips_lambda=0.0, key=jax.random.key(0))
    invert_cached(tmp_path, ["a", "b"], generator, None, targets, log=print, **base)
    settings = dict(base, **{k: v for k, v in change.items() if k != "image"})
    images = targets.copy()
    if "image" in change:
        images[1, 0, 0, 0] += 1e-3  # one value of shot b
    logs = []
    assert read_cache(tmp_path, ["a", "b"], cache_settings(generator, targets, **base), logs.append) is not None
    assert read_cache(tmp_path, ["a", "b"], cache_settings(generator, images, **settings), logs.append) is None
    expected = f"b: {named}" if "image" in change else f"a: {named}; b: {named}"
    assert logs and f"other settings ({expected})" in logs[-1], logs
    # chunk (progress only) is not part of the key
    assert cache_settings(generator, targets, **base, chunk=7) == cache_settings(generator, targets, **base)


def test_a_cache_without_settings_is_recomputed(generator, targets, tmp_path):
    """Cache files written before the key covered every setting (codes, loss, steps and fingerprint only)."""
    base = dict(steps=0, lpips_lambda=0.0, key=jax.random.key(0))
    first = invert_cached(tmp_path, ["a", "b"], generator, None, targets, log=print, **base)
    for name in ("a", "b"):
        with np.load(tmp_path / f"{name}.npz") as z:
            old = {k: z[k] for k in z.files if k != "settings"}
        np.savez(tmp_path / f"{name}.npz", **old)
    logs = []
    again = invert_cached(tmp_path, ["a", "b"], generator, None, targets, log=logs.append, **base)
    assert not again.reused and "other settings" in logs[0], logs
    np.testing.assert_array_equal(again.w_plus, first.w_plus)


def test_lpips_weight_required(generator, targets, keys):
    with pytest.raises(ValueError, match="LPIPS weights"):
        invert(generator, None, targets, keys=keys, steps=1, lpips_lambda=0.8)
