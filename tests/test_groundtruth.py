"""The ground-truth evaluation's arithmetic, against matrices and scores computed by hand.

`metrics.confusion`, `metrics.iou_from_confusion` and `groundtruth.scores` are checked on a six-pixel example worked
out in the comments; the synthesis and pseudo-label measurements run on stand-in pipelines whose answer is known:
a synthesis that paints the input mask in the oracle's base colours must score mIoU 1.0, one that paints sky
everywhere scores what the comments compute, and features that are the masks' own one-hot vectors must be labelled
exactly.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from smis_jax import builtin, data, metrics
from smis_jax.builtin import groundtruth, shapes
from smis_jax.config import DOMAINS
from smis_jax.metrics import confusion, iou_from_confusion

# Six pixels, three classes:   truth 0 1 1 1 2 0
#                              pred  0 0 1 1 2 2
# Confusion (rows = truth, columns = prediction):
#   truth 0: pred 0 once (pixel 0), pred 2 once (pixel 5)  -> [1, 0, 1]
#   truth 1: pred 0 once (pixel 1), pred 1 twice            -> [1, 2, 0]
#   truth 2: pred 2 once (pixel 4)                          -> [0, 0, 1]
# IoU = tp / (row + column - tp): class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 2 - 2) = 2/3;
# class 2: 1 / (1 + 2 - 1) = 1/2. mIoU = (1/3 + 2/3 + 1/2) / 3 = 1/2; without class 0: (2/3 + 1/2) / 2 = 7/12.
# Pixel accuracy: 4 of 6 on the diagonal.
TRUTH = np.array([0, 1, 1, 1, 2, 0])
PRED = np.array([0, 0, 1, 1, 2, 2])


def test_confusion_rows_are_truth_columns_are_prediction():
    np.testing.assert_array_equal(confusion(PRED, TRUTH, 3), [[1, 0, 1], [1, 2, 0], [0, 0, 1]])
    # a class in neither map gets an empty row and column
    np.testing.assert_array_equal(confusion(PRED, TRUTH, 4)[3], 0)
    np.testing.assert_array_equal(confusion(PRED, TRUTH, 4)[:, 3], 0)


def test_iou_from_confusion_by_hand():
    conf = np.array([[1, 0, 1], [1, 2, 0], [0, 0, 1]])
    out = iou_from_confusion(conf, ignore_background=False)
    assert out["per_class"] == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 1 / 2}, abs=1e-12)
    assert out["miou"] == pytest.approx(1 / 2, abs=1e-12)
    out = iou_from_confusion(conf, ignore_background=True)
    assert set(out["per_class"]) == {1, 2} and out["miou"] == pytest.approx(7 / 12, abs=1e-12)
    # A class only predicted (never true) has union > 0 and IoU 0, and counts; one in neither map does not.
    conf4 = np.zeros((4, 4), np.int64)
    conf4[:3, :3] = conf
    conf4[0, 3] = 2  # two class-0 pixels predicted as 3: class 0's union grows by 2 (row 0 now 4)
    out = iou_from_confusion(conf4, ignore_background=False)
    # class 0: 1 / (4 + 2 - 1) = 1/5; class 3: 0 / (0 + 2 - 0) = 0; mean of 1/5, 2/3, 1/2, 0 = 41/120
    assert out["per_class"] == pytest.approx({0: 1 / 5, 1: 2 / 3, 2: 1 / 2, 3: 0.0}, abs=1e-12)
    assert out["miou"] == pytest.approx(41 / 120, abs=1e-12)
    assert np.isnan(iou_from_confusion(np.zeros((3, 3)), ignore_background=False)["miou"])


def test_scores_by_hand_with_and_without_a_valid_mask():
    s = groundtruth.scores(PRED, TRUTH)
    assert s["miou"] == pytest.approx(1 / 2, abs=1e-12) and s["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    assert s["per_class"] == {"sky": round(1 / 3, 4), "mountain": round(2 / 3, 4), "sun": 0.5}
    # Leave pixel 5 (truth 0, pred 2) out: row 0 = [1, 0, 0], column 2 = [0, 0, 1]. class 0: 1 / (1 + 2 - 1) = 1/2,
    # class 1: 2/3 as before, class 2: 1 / (1 + 1 - 1) = 1. mIoU = (1/2 + 2/3 + 1) / 3 = 13/18; accuracy 4/5.
    valid = np.array([True, True, True, True, True, False])
    s = groundtruth.scores(PRED, TRUTH, valid)
    assert s["miou"] == pytest.approx(13 / 18, abs=1e-12) and s["accuracy"] == pytest.approx(4 / 5, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Stand-in pipelines: the synthesis measurement on images whose oracle segmentation is known.

def _paint(labels):
    """Class ids (..., H, W) -> the oracle's base colours in [-1, 1] (..., H, W, 3)."""
    return shapes.BASE_COLORS[np.asarray(labels)] / 127.5 - 1.0


def _stand_in(monkeypatch, draw):
    """groundtruth's synthesize.encode/decode replaced: codes are the one-hot masks themselves (no offsets), and
    decode draws ``draw(class ids (B, 256, 256))`` (B, 256, 256, 3), repeated for each style."""
    def encode(pipeline, onehot):
        return np.asarray(onehot)

    def encode_with_offsets(pipeline, onehot):
        return encode(pipeline, onehot), None

    def decode(pipeline, codes, key, styles=0, first_index=0, **kw):
        image = draw(np.asarray(codes).argmax(-1))
        return image if styles == 0 else np.repeat(image[:, None], styles, 1)

    stand_in = SimpleNamespace(encode=encode, encode_with_offsets=encode_with_offsets, decode=decode)
    monkeypatch.setattr(groundtruth, "synthesize", stand_in)
    return SimpleNamespace(encoder=SimpleNamespace(config=SimpleNamespace(input_nc=len(shapes.CLASS_NAMES))))


def test_synthesis_that_renders_the_mask_scores_one(monkeypatch):
    pipeline = _stand_in(monkeypatch, _paint)
    _, labels256, truth64 = builtin.test_masks(DOMAINS["shapes"])
    synth, synth_styles, images = groundtruth._synthesis_quality(pipeline, labels256, truth64, styles=2, seed=0)
    for s in (synth, synth_styles):
        assert s["miou"] == 1.0 and s["accuracy"] == 1.0
        assert set(s["per_class"].values()) == {1.0} and len(s["per_class"]) == len(shapes.CLASS_NAMES)
    assert images.shape == (len(labels256), 256, 256, 3)


def _sky_over_grass_and_water():
    """Two 64 px masks (256 px at the encoder): A is sky over grass, half and half; B is sky over water, 3/4 and
    1/4."""
    a = np.full((64, 64), shapes.GRASS, np.uint8)
    a[:32] = shapes.SKY
    b = np.full((64, 64), shapes.WATER, np.uint8)
    b[:48] = shapes.SKY
    return np.stack([a, b])


def test_synthesis_that_draws_only_sky_scores_what_the_hand_says(monkeypatch):
    pipeline = _stand_in(monkeypatch, lambda ids: _paint(np.zeros_like(ids)))
    truth64 = _sky_over_grass_and_water()
    labels256 = shapes.upsample_mask(truth64, 4)
    # Predicted sky everywhere: sky's tp = 2048 + 3072 = 5120 of 8192 pixels, its union all 8192: IoU 0.625.
    # Grass (2048 px) and water (1024 px) have tp 0: IoU 0. No other class occurs. mIoU = 0.625 / 3 = 0.2083;
    # accuracy = 5120 / 8192 = 0.625.
    synth, synth_styles, _ = groundtruth._synthesis_quality(pipeline, labels256, truth64, styles=3, seed=0)
    for s in (synth, synth_styles):
        assert s["per_class"] == {"sky": 0.625, "grass": 0.0, "water": 0.0}
        assert s["miou"] == pytest.approx(0.625 / 3, abs=1e-12) and s["accuracy"] == pytest.approx(0.625, abs=1e-12)


def _metrics_stand_in(monkeypatch, draw):
    """metrics' encoder + generator replaced: the image is ``draw`` of the 64 px class ids the encoder would read
    (the one-hot masks reduced to 64x64, as the built-in encoder reads them)."""
    def images(enc_config, gen_config, sparse, enc_vars, gen_params, noises, latent_avg, onehot):
        ids = np.asarray(onehot).argmax(-1)[:, ::4, ::4]
        return draw(ids)

    monkeypatch.setattr(metrics, "_images_of_synthesis", images)
    return SimpleNamespace(input_nc=len(shapes.CLASS_NAMES))


@pytest.mark.parametrize("batch_size", [3, 32])  # 32 masks: a ragged last batch, and one batch
def test_training_time_truth_that_renders_the_mask_scores_one(monkeypatch, batch_size):
    enc_config = _metrics_stand_in(monkeypatch, _paint)
    _, labels256, truth64 = builtin.test_masks(DOMAINS["shapes"])
    out = metrics.synthesis_truth(enc_config, None, None, None, [], None, labels256, truth64, shapes.segment,
                                  len(shapes.CLASS_NAMES), batch_size=batch_size)
    assert out["miou"] == 1.0 and out["accuracy"] == 1.0 and out["n_masks"] == len(labels256)
    assert out["per_class"] == {c: 1.0 for c in range(len(shapes.CLASS_NAMES))}


def test_training_time_truth_that_draws_only_sky_scores_what_the_hand_says(monkeypatch):
    enc_config = _metrics_stand_in(monkeypatch, lambda ids: _paint(np.zeros_like(ids)))
    # The hand example of the sky-only synthesis above: sky IoU 0.625, grass and water 0, accuracy 0.625.
    truth64 = _sky_over_grass_and_water()
    out = metrics.synthesis_truth(enc_config, None, None, None, [], None, shapes.upsample_mask(truth64, 4), truth64,
                                  shapes.segment, len(shapes.CLASS_NAMES), batch_size=4)
    assert out["per_class"] == {shapes.SKY: 0.625, shapes.GRASS: 0.0, shapes.WATER: 0.0}
    assert out["miou"] == pytest.approx(0.625 / 3, abs=1e-12) and out["accuracy"] == pytest.approx(0.625, abs=1e-12)
    with pytest.raises(ValueError, match="2 masks but 1 ground-truth"):
        metrics.synthesis_truth(enc_config, None, None, None, [], None, shapes.upsample_mask(truth64, 4),
                                truth64[:1], shapes.segment, len(shapes.CLASS_NAMES))


def test_pseudo_labels_of_one_hot_features_are_exact():
    """Features that are the masks' one-hot vectors: every class's prototype is its own unit vector, so the dense
    labels (1 and 5 shots; shot 0 has all seven classes) equal the truth, and every sparse label is right."""
    _, _, masks256 = builtin.shots(DOMAINS["shapes"], 5)
    masks64 = shapes.downsample_mask(masks256, shapes.SIZE)
    scribbles64 = np.stack([shapes.scribbles(m, i) for i, m in enumerate(masks64)])
    n = len(shapes.CLASS_NAMES)
    features_shots = data.onehot(masks64, n).astype(np.float32)
    oracle = builtin.test_masks(DOMAINS["shapes"], 8)[2]
    sample_features = data.onehot(oracle, n).astype(np.float32)
    out = groundtruth._pseudo_label_quality("paper", features_shots, masks64, scribbles64, sample_features, oracle,
                                            topk=3, cos_th=0.5)
    for key in ("dense_1shot", "dense_5shot", "sparse_1shot", "sparse_5shot"):
        assert out[key]["miou"] == 1.0 and out[key]["accuracy"] == 1.0, (key, out[key])
    # (identical vectors tie: every annotated vector of a class picks the same top-3 pixels, so coverage is small)
    assert 0 < out["sparse_1shot"]["coverage"] <= out["sparse_5shot"]["coverage"] < 1


# ---------------------------------------------------------------------------------------------------------------
# Where the evaluation caches the shots' inversion when the export carries no codes.

class _Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["run", "export"])
def test_evaluation_caches_inversions_only_in_the_run_or_export_folder(tmp_path, monkeypatch, where):
    from smis_jax import export
    from smis_jax.config import TrainConfig
    from smis_jax.io import load_generator

    g = load_generator(builtin.generator_path())
    train = TrainConfig(domain="shapes").to_dict()
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    run_export = export.RunExport(
        pipeline=SimpleNamespace(generator=g, latent_avg=np.asarray(g.truncation_latent())[None]),
        prototypes=None, run={"domain": "shapes", "train": train}, shots=None, path=export_dir)
    seen = {}

    def invert_cached(cache, names, generator, lpips_params, images, key, log=print, **kw):
        seen["cache"] = Path(cache)
        seen["steps"] = kw["steps"]
        raise _Stop

    monkeypatch.setattr(groundtruth, "invert_cached", invert_cached)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = tmp_path / "run" if where == "run" else None
    monkeypatch.setattr(groundtruth, "load_lpips", lambda: SimpleNamespace(params=None))
    with pytest.raises(_Stop):
        groundtruth.evaluate(run_export, report_dir=None, run_dir=run_dir, log=lambda m: None)
    assert seen["steps"] == train["inversion_steps"]
    assert seen["cache"] == (run_dir if where == "run" else export_dir) / "inversion"
    assert not any(cwd.iterdir())
