"""The built-in procedural domain: determinism, the oracle's accuracy, scribbles, mask resampling."""

import numpy as np
import pytest

from smis_jax.builtin import shapes


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


@pytest.fixture(scope="module")
def classifier():
    return shapes.shape_classifier(n_scenes=400)


def test_colour_fidelity_is_high_on_real_scenes_and_catches_red_lakes(classifier):
    """On real scenes (colour = class) each object class's regions are recognised by shape (the ceiling); drawing
    every lake in the house's red leaves water's regions red: water's fidelity collapses, the others hold."""
    real = shapes.render_batch(shapes.TEST_SEED, 0, 200).mask
    base = shapes.colour_fidelity(real, classifier)
    assert all(v >= 0.9 for v in base["per_class"].values()), base  # 0.93-0.99 measured
    red_lakes = np.where(real == shapes.WATER, shapes.HOUSE, real)
    red = shapes.colour_fidelity(red_lakes, classifier)
    assert red["per_class"]["water"] < 0.2 and red["n_regions"]["water"] >= 0.8 * base["n_regions"]["water"]
    for name in ("sun", "tree"):
        assert abs(red["per_class"][name] - base["per_class"][name]) < 0.05
    # the confusion is counted per (shape, colour): the red lakes sit in row water, column house
    i_water, i_house = shapes.OBJECT_CLASSES.index(shapes.WATER), shapes.OBJECT_CLASSES.index(shapes.HOUSE)
    assert red["confusion"][i_water][i_house] > base["confusion"][i_water][i_house] + 0.7 * base["n_regions"]["water"]


def test_regions_are_connected_components_with_shape_features():
    """Two separate discs of one class are two regions, a speck under MIN_REGION_PX is none; a wide ellipse has a
    wide aspect, a square fills its box."""
    m = np.full((64, 64), shapes.SKY, np.uint8)
    y, x = np.mgrid[0:64, 0:64]
    m[(x - 15) ** 2 + (y - 15) ** 2 < 25] = shapes.SUN
    m[(x - 45) ** 2 + (y - 15) ** 2 < 25] = shapes.SUN
    m[60, 60] = shapes.SUN  # one pixel
    m[((x - 32) / 12.0) ** 2 + ((y - 45) / 4.0) ** 2 < 1] = shapes.WATER
    m[50:58, 2:10] = shapes.HOUSE
    found = shapes.regions(m)
    assert sorted(c for c, _ in found) == [shapes.SUN, shapes.SUN, shapes.WATER, shapes.HOUSE]
    feats = {c: f for c, f in found}
    assert feats[shapes.WATER][0] > np.log(2.5)  # log(width / height)
    assert feats[shapes.HOUSE][1] == 1.0 and feats[shapes.HOUSE][0] == 0.0  # a full square box


def test_readme_quotes_the_domains_ceiling_on_one_class_canvases():
    """No scene of the domain is mostly one class: the README's largest shares of sky, grass and water over 3,000
    training scenes (what a one-class canvas can at best come out as) are these scenes' own."""
    from pathlib import Path

    masks = shapes.render_batch(shapes.TRAIN_SEED, 0, 3000).mask
    text = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    share = {name: (masks == cls).mean(axis=(1, 2))
             for cls, name in ((shapes.SKY, "sky"), (shapes.GRASS, "grass"), (shapes.WATER, "water"))}
    phrase = "the largest share of sky is {:.3f} (99th percentile {:.3f}), of grass {:.3f} ({:.3f}), of water {:.3f} " \
             "({:.3f};".format(*(f(share[n]) for n in share for f in (np.max, lambda v: np.percentile(v, 99))))
    assert phrase in text, phrase
    assert (masks == shapes.SKY).mean(axis=(1, 2)).max() < 0.65
