"""The pseudo-labellers of ``--labeler`` (smis_jax.labelers): known answers on tiny inputs, the paper's labeller
bit for bit, multi-scale taps of a tiny generator, and the state that checkpoints and exports hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smis_jax import config, labelers, labeling
from smis_jax.errors import ConfigError
from smis_jax.nets.stylegan2 import Generator, GeneratorConfig, init_params, make_noise

TINY = GeneratorConfig(64, style_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 6, 32: 5, 64: 4})


@pytest.fixture(scope="module")
def tiny():
    return init_params(TINY, jax.random.key(0))


def _clustered(rng, n_classes, k=3, h=8, c=6, noise=0.05):
    """Shots whose pixel vectors sit near one random direction per class: features (k, h, h, c), ids (k, h, h)."""
    centres = rng.standard_normal((n_classes, c)).astype(np.float32)
    ids = rng.integers(0, n_classes, (k, h, h))
    ids[0, :n_classes, 0] = np.arange(n_classes)  # every class present
    feats = centres[ids] + noise * rng.standard_normal((k, h, h, c)).astype(np.float32)
    return feats, ids, centres


def test_labelers_names_match_config():
    assert config.LABELERS == labelers.LABELERS
    with pytest.raises(ConfigError, match="labeler"):
        config.TrainConfig(domain="shapes", labeler="nope")


def test_knn_with_one_vector_per_class_is_the_paper():
    rng = np.random.default_rng(0)
    feats, ids, _ = _clustered(rng, 5, noise=0.5)
    onehot = np.eye(5, dtype=np.float32)[ids]
    paper = labeling.prototypes(feats, onehot, "dense")
    knn = labelers.Labeler(protos=labeling.SparsePrototypes(paper.vectors, jnp.arange(5, dtype=jnp.int32), 5),
                           kind="knn", dense=True, n_classes=5)
    samples = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
    want = labeling.pseudo_label(samples, paper, out_size=16)
    np.testing.assert_array_equal(labelers.label(samples, knn, topk=1, out_size=16), want)
    # every vector of a class identical: any k votes only for the nearest class -> the paper's labels again
    same = paper.vectors[ids]
    fitted = labelers.fit("knn", np.asarray(same), onehot, "dense")
    np.testing.assert_array_equal(labelers.label(samples, fitted, topk=3, out_size=16), want)


def test_knn_sparse_threshold_leaves_far_pixels_unlabelled():
    # two annotated vectors along e0 (class 1) and e1 (class 2); sample pixels along e0, e1 and e2
    feats = np.zeros((1, 2, 2, 3), np.float32)
    feats[0, 0, 0] = [1, 0, 0]
    feats[0, 0, 1] = [0, 1, 0]
    feats[0, 1, :] = [1, 1, 1]
    ids = np.zeros((1, 2, 2), int)
    ids[0, 0, 0], ids[0, 0, 1] = 1, 2
    lab = labelers.fit("knn", feats, np.eye(3, dtype=np.float32)[ids], "sparse")
    assert np.asarray(lab.protos.classes).tolist() == [1, 2]
    sample = jnp.asarray([[[[2, 0.1, 0], [0, 3, 0.2]], [[0, 0, 1], [0.1, 0.1, -1]]]], jnp.float32)
    got = np.asarray(labelers.label(sample, lab, topk=2, cos_th=0.5, out_size=2))
    assert got.tolist() == [[[1, 2], [0, 0]]]


def test_linear_separates_separable_classes_and_doubts_between_them():
    rng = np.random.default_rng(1)
    feats, ids, centres = _clustered(rng, 4, k=3, h=8, c=6)
    dense = labelers.fit("linear", feats, np.eye(4, dtype=np.float32)[ids], "dense")
    fresh_ids = rng.integers(0, 4, (2, 8, 8))
    fresh = centres[fresh_ids] + 0.05 * rng.standard_normal((2, 8, 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(labelers.label(jnp.asarray(fresh), dense, out_size=8), fresh_ids)
    # sparse: class 0 = not annotated; fitted on the annotated pixels, unsure (between two classes) -> 0
    sparse_ids = np.where(rng.random(ids.shape) < 0.3, ids + 1, 0)
    sparse_ids[0, :4, 0] = np.arange(1, 5)
    sparse = labelers.fit("linear", feats, np.eye(5, dtype=np.float32)[sparse_ids], "sparse")
    confident = np.asarray(labelers.label(jnp.asarray(fresh), sparse, out_size=8))
    np.testing.assert_array_equal(confident, fresh_ids + 1)
    between = jnp.asarray(((centres[0] + centres[1]) / 2)[None, None, None], jnp.float32)
    assert int(labelers.label(between, sparse, out_size=1)[0, 0, 0]) == 0


def test_linear_never_predicts_a_class_absent_from_the_shots():
    rng = np.random.default_rng(2)
    feats, ids, centres = _clustered(rng, 3)
    onehot = np.eye(4, dtype=np.float32)[ids]  # class 3 never annotated
    lab = labelers.fit("linear", feats, onehot, "dense")
    assert np.asarray(lab.present).tolist() == [True, True, True, False]
    anywhere = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
    assert int(labelers.label(anywhere, lab, out_size=8).max()) <= 2


def _inputs(seed, batch):
    c = TINY
    w = jnp.broadcast_to(jax.random.normal(jax.random.key(seed), (batch, 1, c.style_dim)),
                         (batch, c.n_latent, c.style_dim))
    return w, make_noise(c, jax.random.key(seed + 1), batch, 64)


# jitted once: the generator op by op is slow on XLA:CPU
_features = jax.jit(lambda p, w, n: Generator(TINY).apply(p, w, n, until_res=64)[1])
_label_latents = jax.jit(labelers.label_latents, static_argnums=(0,), static_argnames=("out_size",))
_label_features = jax.jit(labelers.label_features, static_argnums=(0, 4))


def test_paper_labels_through_label_latents_are_the_original_path(tiny):
    c = TINY
    w, noise = _inputs(3, 3)
    feats = _features(tiny, w, noise)
    ids = np.asarray(jax.random.randint(jax.random.key(3), (3, 64, 64), 0, 4))
    protos = labeling.prototypes(feats, np.eye(4, dtype=np.float32)[ids], "dense")
    want = labeling.pseudo_label(feats, protos, out_size=64)
    for lab in (protos, labelers.fit("paper", feats, np.eye(4, dtype=np.float32)[ids], "dense")):
        np.testing.assert_array_equal(_label_latents(c, tiny, w, noise, lab, out_size=64), want)
    # out_size: the same labels repeated
    big = _label_latents(c, tiny, w, noise, protos, out_size=128)
    np.testing.assert_array_equal(big[:, ::2, ::2], want)


def test_multiscale_taps_are_normalised_upsampled_blocks(tiny):
    c = TINY
    w, noise = _inputs(5, 2)
    f64 = _features(tiny, w, noise)
    np.testing.assert_array_equal(_label_features(c, tiny, w, noise, (64,)), f64)
    taps = labelers.taps_of("multiscale", c)
    assert taps == (16, 32, 64)
    ms = np.asarray(_label_features(c, tiny, w, noise, taps))
    assert ms.shape == (2, 64, 64, 6 + 5 + 4)
    f = np.asarray(f64)
    np.testing.assert_allclose(ms[..., -4:], f / (np.linalg.norm(f, axis=-1, keepdims=True) + 1e-8), atol=1e-6)
    # the 16x16 block: bilinear upsampling keeps a constant map constant and lies within the block's unit vectors
    assert np.all(np.linalg.norm(ms[..., :6], axis=-1) <= 1 + 1e-5)
    # sown taps never change the generator's outputs or parameters
    assert set(init_params(c, jax.random.key(0))) == {"params"}


@pytest.mark.parametrize("kind", labelers.LABELERS)
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_state_round_trip_labels_alike(kind, mode):
    rng = np.random.default_rng(7)
    feats, ids, _ = _clustered(rng, 4, c=6)
    n = 4 if mode == "dense" else 5
    ids = ids if mode == "dense" else np.where(rng.random(ids.shape) < 0.5, ids + 1, 0)
    lab = labelers.fit(kind, feats, np.eye(n, dtype=np.float32)[ids], mode)
    state = labelers.to_state(lab)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    back = labelers.from_state(state)
    assert (back.kind, back.dense, back.taps, back.n_classes) == (lab.kind, lab.dense, lab.taps, lab.n_classes)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
    np.testing.assert_array_equal(labelers.label(x, back, out_size=8), labelers.label(x, lab, out_size=8))


def test_prototypes_alone_load_as_paper():
    rng = np.random.default_rng(8)
    feats, ids, _ = _clustered(rng, 3)
    protos = labeling.prototypes(feats, np.eye(3, dtype=np.float32)[ids], "dense")
    lab = labelers.from_state(labeling.prototypes_state(protos))
    assert lab.kind == "paper" and lab.dense
    np.testing.assert_array_equal(lab.protos.vectors, protos.vectors)
    with pytest.raises(labeling.LabelingError, match="unknown labeller"):
        labelers.fit("nope", feats, np.eye(3, dtype=np.float32)[ids])


def test_fit_on_reliable_pixels_drops_the_rest_but_never_a_whole_class():
    feats = np.zeros((1, 2, 2, 2), np.float32)
    feats[0, 0, :] = [1, 0]  # class 0, reliable
    feats[0, 1, 0] = [0, 1]  # class 1, reliable
    feats[0, 1, 1] = [1, 0.1]  # labelled class 1 but drawn like class 0: unreliable
    ids = np.array([[[0, 0], [1, 1]]])
    onehot = np.eye(3, dtype=np.float32)[ids]
    reliable = np.array([[[True, True], [True, False]]])
    lab = labelers.fit("multiscale", feats, onehot, "dense", reliable)
    np.testing.assert_allclose(lab.protos.vectors[1], [0, 1], atol=1e-6)  # the unreliable pixel left out
    # class 1 unreliable everywhere: its pixels are kept rather than the class dropped
    lab = labelers.fit("multiscale", feats, onehot, "dense", np.array([[[True, True], [False, False]]]))
    assert bool(lab.protos.present[1])
    # the paper's labeller ignores it (the original's rule)
    paper = labelers.fit("paper", feats, onehot, "dense", reliable)
    np.testing.assert_array_equal(paper.protos.vectors, labeling.prototypes(feats, onehot, "dense").vectors)


def test_labeler_flag_and_domain_defaults():
    from train import run as train_cli

    pick = lambda argv: config.TrainConfig.for_domain(  # noqa: E731
        "shapes" if "shapes" in argv else "faces", **{n: getattr(train_cli.parse_args(argv), n)
                                                        for n in train_cli.TRAIN_FLAGS})
    assert pick(["--domain", "faces", "--workdir", "w", "--data", "d", "--stylegan", "g.pt"]).labeler == "paper"
    assert pick(["--domain", "shapes", "--workdir", "w"]).labeler == "linear"  # built-in: measured best
    assert pick(["--domain", "shapes", "--workdir", "w", "--labeler", "knn"]).labeler == "knn"
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--domain", "shapes", "--workdir", "w", "--labeler", "nope"])
