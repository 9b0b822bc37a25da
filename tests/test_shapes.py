"""The built-in procedural domain: determinism, the oracle's accuracy, scribbles, mask resampling."""

import numpy as np
import pytest

from smis_jax import shapes


def test_scenes_are_deterministic_per_seed_and_index():
    a, b = shapes.render(3, 17), shapes.render(3, 17)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    batch = shapes.render_batch(3, 15, 4)
    assert np.array_equal(batch.image[2], a.image)  # a scene does not depend on the batch it is drawn in
    other = shapes.render(4, 17)
    assert not np.array_equal(other.mask, a.mask)
    assert a.image.dtype == np.float32 and a.image.shape == (64, 64, 3) and a.mask.shape == (64, 64)
    assert a.image.min() >= -1 and a.image.max() <= 1


def test_layout_and_appearance_vary():
    batch = shapes.render_batch(0, 0, 64)
    present = np.array([[c in m for c in range(len(shapes.CLASS_NAMES))] for m in batch.mask])
    assert present.all(axis=0).sum() >= 2 and present.any(axis=0).all()  # every class occurs, layouts differ
    assert 3 <= present.sum(1).mean() <= 7
    # the same class gets different colours in different scenes (a mask does not determine the image)
    sky = np.array([im[m == shapes.SKY].mean(0) for im, m in zip(batch.image, batch.mask)])
    assert np.ptp(sky, axis=0).max() * 127.5 > 10


@pytest.mark.parametrize("size", [64, 256])
def test_oracle_recovers_clean_masks(size):
    batch = shapes.render_batch(shapes.TEST_SEED, 0, 32, size)
    seg = shapes.segment(batch.image)
    assert (seg == batch.mask).mean() >= 0.99  # the bar; by construction it is exact
    assert (seg == batch.mask).all()
    assert shapes.oracle_confidence(batch.image) == 1.0


def test_oracle_confidence_drops_on_off_palette_pixels():
    image = shapes.render(0, 0).image.copy()
    image[:32] = -1.0  # black is far from every base colour
    assert shapes.oracle_confidence(image) == pytest.approx(0.5, abs=0.01)


def test_base_colours_are_separable_beyond_the_deviation():
    d = np.abs(shapes.BASE_COLORS[:, None] - shapes.BASE_COLORS[None]).max(-1)
    assert d[~np.eye(len(d), dtype=bool)].min() > 2 * shapes.MAX_DEVIATION


def test_scribbles_lie_inside_their_class():
    for i in range(8):
        scene = shapes.render(shapes.SHOT_SEED, i)
        s = shapes.scribbles(scene.mask, i)
        on = s > 0
        assert on.any()
        assert np.array_equal(s[on] - 1, scene.mask[on])  # every stroke pixel names its true class
        assert set(np.unique(s[on]) - 1) <= set(np.unique(scene.mask))
        assert on.mean() < 0.1  # sparse
    assert np.array_equal(shapes.scribbles(scene.mask, 5), shapes.scribbles(scene.mask, 5))


def test_mask_resampling_round_trips():
    m = shapes.render(0, 1).mask
    up = shapes.upsample_mask(m, 4)
    assert up.shape == (256, 256) and np.array_equal(shapes.downsample_mask(up, 64), m)
    with pytest.raises(ValueError, match="multiple"):
        shapes.downsample_mask(np.zeros((100, 100), np.uint8), 64)
