"""Prototypes and pseudo-labels: golden parity, vectorised paths against their loop twins, no retracing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FORWARD_TOL, rel_err, count_traces

from smis_jax import labeling
from smis_jax.labeling import (
    DensePrototypes,
    LabelingError,
    SparsePrototypes,
    cosine_scores,
    labels_to_onehot,
    prototypes,
    pseudo_label,
)


def _load(golden, name):
    """Golden arrays in our layout: features NHWC, masks one-hot NHWC."""
    g = dict(np.load(golden / f"{name}.npz"))
    cfg = json.loads((golden / f"{name}.json").read_text())
    n_classes = cfg["n_classes"]
    g["feats_fewshot"] = g["feats_fewshot"].transpose(0, 2, 3, 1)
    g["feats_query"] = g["feats_query"].transpose(0, 2, 3, 1)
    g["masks_fewshot"] = np.eye(n_classes, dtype=np.float32)[g["labels_fewshot"]]
    return g, cfg


@pytest.fixture(scope="module")
def dense_golden(golden):
    return _load(golden, "label_dense_celebamask")


@pytest.fixture(scope="module")
def sparse_golden(golden):
    return _load(golden, "label_sparse_celebalandmark")


# ---------------------------------------------------------------------------------------------------------
# Golden parity


def test_dense_prototypes_and_cosines_match_golden(dense_golden):
    g, _ = dense_golden
    protos = prototypes(g["feats_fewshot"], g["masks_fewshot"], mode="dense")
    assert isinstance(protos, DensePrototypes)
    assert rel_err(protos.vectors, g["prototypes"]) < FORWARD_TOL
    np.testing.assert_array_equal(np.asarray(protos.present), np.abs(g["prototypes"]).sum(1) > 0)
    cos = cosine_scores(g["feats_query"], protos, compat=True)
    assert rel_err(cos, g["cos_query"].transpose(0, 2, 3, 1)) < FORWARD_TOL
    # Our default excludes the absent classes outright.
    cos_fixed = np.asarray(cosine_scores(g["feats_query"], protos))
    assert np.all(np.isneginf(cos_fixed[..., ~np.asarray(protos.present)]))


def test_dense_labels_match_golden(dense_golden):
    g, cfg = dense_golden
    protos = prototypes(g["feats_fewshot"], g["masks_fewshot"], mode="dense")
    expected = g["labels_query"].astype(np.int32)
    compat = pseudo_label(g["feats_query"], protos, out_size=cfg["out_size"], compat=True)
    assert compat.dtype == jnp.int32 and compat.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(compat), expected)

    # Without compat, a pixel changes exactly where the original let an absent class's zero prototype win
    # (all real cosines < 0 there); it then takes the best present class. Derived from the golden cosines, so
    # the assertion holds whether or not the data contains such pixels.
    cos = g["cos_query"].transpose(0, 2, 3, 1)  # (B, 64, 64, L)
    present = np.abs(g["prototypes"]).sum(1) > 0
    absent_wins = ~present[cos.argmax(-1)]
    repaired = np.where(present, cos, -np.inf).argmax(-1)
    scale = cfg["out_size"] // cos.shape[1]
    absent_wins = absent_wins.repeat(scale, 1).repeat(scale, 2)
    repaired = repaired.repeat(scale, 1).repeat(scale, 2)
    fixed = np.asarray(pseudo_label(g["feats_query"], protos, out_size=cfg["out_size"]))
    np.testing.assert_array_equal(fixed != expected, absent_wins)
    np.testing.assert_array_equal(fixed[absent_wins], repaired[absent_wins])
    assert present[fixed].all()


def test_sparse_prototypes_and_labels_match_golden(sparse_golden):
    g, cfg = sparse_golden
    protos = prototypes(g["feats_fewshot"], g["masks_fewshot"], mode="sparse")
    assert isinstance(protos, SparsePrototypes) and protos.n_classes == cfg["n_classes"]
    counts = np.bincount(np.asarray(protos.classes), minlength=cfg["n_classes"])
    # Class 0 ("not annotated") is collected by the original but never used; we do not keep it.
    assert counts[0] == 0
    np.testing.assert_array_equal(counts[1:], g["proto_counts"][1:])
    assert np.all(np.diff(np.asarray(protos.classes)) >= 0)
    assert rel_err(protos.vectors, g["prototypes_concat"][g["proto_counts"][0]:]) < FORWARD_TOL

    expected = g["labels_query"].astype(np.int32)
    assert (expected > 0).any() and (expected == 0).any()  # the golden exercises both outcomes
    labels = pseudo_label(g["feats_query"], protos, topk=cfg["topk"], cos_th=cfg["cos_th"], out_size=cfg["out_size"])
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(labels), expected)
    # The chunked (lax.map) path gives the same labels, including an uneven last chunk.
    chunked = pseudo_label(g["feats_query"], protos, topk=cfg["topk"], cos_th=cfg["cos_th"], chunk=100)
    np.testing.assert_array_equal(np.asarray(chunked), expected)


# ---------------------------------------------------------------------------------------------------------
# Mask reduction


def test_masks_are_reduced_top_left_not_centre():
    """Class 1 sits only on the top-left pixel of every 4x4 block: torch nearest sees it, centre sampling not."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 16, 16, 8)).astype(np.float32)
    ids = np.zeros((2, 64, 64), np.int64)
    ids[:, ::4, ::4] = 1
    ids[1, 4 * 3 + 2, 4 * 5 + 2] = 2  # a centre pixel: invisible to torch nearest
    masks = np.eye(3, dtype=np.float32)[ids]
    sparse = prototypes(feats, masks, mode="sparse")
    np.testing.assert_array_equal(np.bincount(np.asarray(sparse.classes), minlength=3), [0, 2 * 16 * 16, 0])
    dense = prototypes(feats, masks, mode="dense")
    np.testing.assert_array_equal(np.asarray(dense.present), [False, True, False])
    # Masks already at the feature size are used as they are.
    same = prototypes(feats, masks[:, ::4, ::4], mode="dense")
    np.testing.assert_array_equal(np.asarray(same.vectors), np.asarray(dense.vectors))


# ---------------------------------------------------------------------------------------------------------
# Vectorised paths against the loop twins


def _random_masks(rng, k, size, n_classes, absent):
    ids = rng.integers(0, n_classes, size=(k, size, size))
    for c in absent:
        ids[ids == c] = 0
    return np.eye(n_classes, dtype=np.float32)[ids]


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_prototypes_match_loop_reference(mode):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 8, 8, 6)).astype(np.float32)
    masks = _random_masks(rng, 3, 32, n_classes=7, absent=(4,))
    # Class 2 missing from one shot only: its prototype is the mean over the two shots that have it.
    masks[1, :, :, 0] += masks[1, :, :, 2]
    masks[1, :, :, 2] = 0
    got = prototypes(feats, masks, mode=mode)
    ref = labeling._prototypes_reference(feats, masks, mode=mode)
    if mode == "dense":
        assert rel_err(got.vectors, ref) < FORWARD_TOL
        assert np.all(np.asarray(got.vectors)[4] == 0) and not bool(got.present[4])
    else:
        np.testing.assert_array_equal(
            np.bincount(np.asarray(got.classes), minlength=7)[1:], [len(v) for v in ref[1:]]
        )
        assert rel_err(got.vectors, np.concatenate(ref[1:])) < FORWARD_TOL


def _features_with_ties(rng, b, size, c, n_distinct):
    """Pixels drawn from a few distinct vectors: equal similarities between pixels are exact, not rounding luck."""
    palette = rng.normal(size=(n_distinct, c)).astype(np.float32)
    return palette[rng.integers(0, n_distinct, size=(b, size, size))], palette


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_dense_labels_match_loop_reference(b, ties):
    rng = np.random.default_rng(10 * b + ties)
    n_classes, c, size = 6, 5, 8
    if ties:
        feats, palette = _features_with_ties(rng, b, size, c, n_distinct=4)
        vectors = palette[rng.integers(0, 4, size=n_classes)]  # duplicate prototypes: the first class wins
    else:
        feats = rng.normal(size=(b, size, size, c)).astype(np.float32)
        vectors = rng.normal(size=(n_classes, c)).astype(np.float32)
    feats[0, 0, 0] = 0  # a zero feature vector: every cosine 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    present = np.array([True, True, False, True, False, True])
    vectors[~present] = 0
    protos = DensePrototypes(vectors=jnp.asarray(vectors), present=jnp.asarray(present))
    for compat in (False, True):
        got = pseudo_label(feats, protos, out_size=4 * size, compat=compat)
        ref = labeling._dense_label_reference(feats, vectors, None if compat else present, out_size=4 * size)
        np.testing.assert_array_equal(np.asarray(got), ref)
    assert not np.isin(np.asarray(pseudo_label(feats, protos, out_size=size)), np.flatnonzero(~present)).any()


@pytest.mark.parametrize(
    "b,topk,cos_th,ties,chunk",
    [
        (1, 3, 0.5, False, None),
        (2, 1, 0.0, True, None),
        (3, 5, 0.3, True, 7),  # lax.map over uneven chunks
        (2, 3, -1.0, False, None),  # every value passes the threshold; negative ones still never label
        (2, 2, 0.9, True, None),
        (2, 9, 0.2, True, None),  # k above the rounds limit: the lax.top_k path
    ],
)
def test_sparse_labels_match_loop_reference(b, topk, cos_th, ties, chunk):
    rng = np.random.default_rng(hash((b, topk, ties)) % 2**32)
    n_classes, c, size = 7, 6, 8
    counts = [0, 5, 0, 3, 8, 1, 6]  # classes 2 and 0 have no vectors
    if ties:
        feats, palette = _features_with_ties(rng, b, size, c, n_distinct=5)
        pool = palette[rng.integers(0, 5, size=sum(counts))]  # the same vector in several classes
        pool = pool + 0.02 * rng.normal(size=pool.shape).astype(np.float32) * rng.integers(0, 2, size=(len(pool), 1))
    else:
        feats = rng.normal(size=(b, size, size, c)).astype(np.float32)
        pool = rng.normal(size=(sum(counts), c)).astype(np.float32)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float32)
    per_class = np.split(pool, np.cumsum(counts)[:-1])
    classes = np.repeat(np.arange(n_classes), counts).astype(np.int32)
    protos = SparsePrototypes(vectors=jnp.asarray(pool), classes=jnp.asarray(classes), n_classes=n_classes)
    got = np.asarray(pseudo_label(feats, protos, topk=topk, cos_th=cos_th, out_size=2 * size, chunk=chunk))
    ref = labeling._sparse_label_reference(feats, per_class, topk=topk, cos_th=cos_th, out_size=2 * size)
    np.testing.assert_array_equal(got, ref)
    assert (ref == 0).any() and (ref > 0).any()


@pytest.mark.parametrize("k", [1, 3, 9])
def test_top_k_matches_lax_top_k_with_ties(k):
    rng = np.random.default_rng(k)
    x = rng.integers(0, 4, size=(2, 5, 32)).astype(np.float32)  # many exact ties
    vals, idx = labeling._top_k_last(jnp.asarray(x), k)
    ref_vals, ref_idx = jax.lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_array_equal(np.asarray(idx), np.argsort(-x, axis=-1, kind="stable")[..., :k])


def test_batch_sharded_over_devices_stays_sharded():
    """Data-parallel training splits the batch over a mesh: labels must match and nothing is all-gathered."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(4, 8, 8, 6)).astype(np.float32)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sparse = SparsePrototypes(vectors=jnp.asarray(vectors), classes=jnp.asarray(np.repeat([1, 2, 4], [10, 20, 10]),
                                                                                jnp.int32), n_classes=5)
    dense = DensePrototypes(vectors=jnp.asarray(vectors[:5]), present=jnp.ones(5, bool))
    sharded = jax.device_put(feats, NamedSharding(mesh, PartitionSpec("data")))
    for protos in (sparse, dense):
        protos_rep = jax.device_put(protos, NamedSharding(mesh, PartitionSpec()))
        out = pseudo_label(sharded, protos_rep, cos_th=0.2, out_size=16)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(pseudo_label(feats, protos, cos_th=0.2, out_size=16)))
        assert out.sharding.spec == PartitionSpec("data")
        hlo = labeling._pseudo_label_jit.lower(
            sharded, protos_rep, 0.2, topk=3, out_size=16, compat=False, chunk=None
        ).compile().as_text()
        assert "all-gather" not in hlo and "all-reduce" not in hlo


def test_sparse_threshold_is_strict():
    """A cosine exactly equal to cos_th does not label (psp.py keeps values > cos_th)."""
    feats = np.zeros((1, 8, 8, 3), np.float32)
    feats[0, 2, 5] = [1, 0, 0]  # unit vectors: their cosine with e1 is exactly 1.0 in float32
    feats[0, 6, 1] = [0, 1, 0]
    protos = SparsePrototypes(vectors=jnp.asarray([[1.0, 0, 0], [0, 1, 0]]), classes=jnp.asarray([1, 2], jnp.int32),
                              n_classes=3)
    at_th = np.asarray(pseudo_label(feats, protos, topk=1, cos_th=1.0, out_size=8))
    np.testing.assert_array_equal(at_th, 0)
    below = np.asarray(pseudo_label(feats, protos, topk=1, cos_th=0.999, out_size=8))
    assert below[0, 2, 5] == 1 and below[0, 6, 1] == 2 and (below > 0).sum() == 2


def test_sparse_without_annotations_labels_nothing():
    protos = SparsePrototypes(vectors=jnp.zeros((0, 4)), classes=jnp.zeros((0,), jnp.int32), n_classes=3)
    labels = pseudo_label(np.ones((2, 8, 8, 4), np.float32), protos, out_size=16)
    np.testing.assert_array_equal(np.asarray(labels), np.zeros((2, 16, 16), np.int32))


# ---------------------------------------------------------------------------------------------------------
# Compilation, pytrees, helpers, errors


def test_pseudo_label_compiles_once_per_shape():
    rng = np.random.default_rng(3)
    feats = lambda b: jnp.asarray(rng.normal(size=(b, 8, 8, 4)).astype(np.float32))  # noqa: E731
    sparse = SparsePrototypes(
        vectors=jnp.asarray(rng.normal(size=(5, 4)).astype(np.float32)),
        classes=jnp.asarray([1, 1, 2, 3, 3], jnp.int32),
        n_classes=4,
    )
    dense = DensePrototypes(vectors=jnp.asarray(rng.normal(size=(4, 4)).astype(np.float32)),
                            present=jnp.ones(4, bool))
    pseudo_label(feats(2), sparse, out_size=16)
    pseudo_label(feats(2), dense, out_size=16)
    with count_traces() as traced:
        for _ in range(3):  # new arrays, same shapes; cos_th is traced, so a new threshold does not recompile
            pseudo_label(feats(2), sparse, cos_th=float(rng.uniform()), out_size=16)
            pseudo_label(feats(2), dense, out_size=16)
    assert traced() == 0
    with count_traces() as traced:
        pseudo_label(feats(3), dense, out_size=16)  # a new batch size is a new shape: the counter does move
    assert traced() >= 1


def test_prototypes_are_pytrees_and_survive_orbax(tmp_path):
    import orbax.checkpoint as ocp

    sparse = SparsePrototypes(vectors=jnp.ones((3, 2)), classes=jnp.asarray([1, 2, 2], jnp.int32), n_classes=5)
    leaves, treedef = jax.tree_util.tree_flatten(sparse)
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(treedef, leaves).n_classes == 5
    dense = DensePrototypes(vectors=jnp.ones((3, 2)), present=jnp.asarray([True, False, True]))
    with ocp.StandardCheckpointer() as ckptr:
        for name, protos in (("sparse", sparse), ("dense", dense)):
            ckptr.save(tmp_path / name, labeling.prototypes_state(protos))
            ckptr.wait_until_finished()
            back = labeling.prototypes_from_state(ckptr.restore(tmp_path / name))
            assert type(back) is type(protos)
            assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(protos)
            for a, e in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(protos)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_labels_to_onehot():
    labels = jnp.asarray([[[0, 2], [1, 2]]], jnp.int32)
    onehot = labels_to_onehot(labels, 3)
    assert onehot.shape == (1, 2, 2, 3) and onehot.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(onehot).argmax(-1), np.asarray(labels))
    np.testing.assert_array_equal(np.asarray(onehot).sum(-1), 1)


def test_bad_shapes_raise_one_line_errors():
    feats = np.zeros((2, 8, 8, 4), np.float32)
    with pytest.raises(LabelingError, match="do not fit"):
        prototypes(feats, np.zeros((2, 30, 30, 3), np.float32))
    with pytest.raises(LabelingError, match="do not fit"):
        prototypes(feats, np.zeros((3, 32, 32, 3), np.float32))
    with pytest.raises(LabelingError, match="mode"):
        prototypes(feats, np.zeros((2, 32, 32, 3), np.float32), mode="fuzzy")
    dense = DensePrototypes(vectors=jnp.zeros((3, 5)), present=jnp.ones(3, bool))
    with pytest.raises(LabelingError, match="match the prototypes"):
        pseudo_label(feats, dense, out_size=16)
    sparse = SparsePrototypes(vectors=jnp.zeros((2, 4)), classes=jnp.asarray([1, 2], jnp.int32), n_classes=3)
    with pytest.raises(LabelingError, match="out_size"):
        pseudo_label(feats, sparse, out_size=20)
    with pytest.raises(LabelingError, match="topk"):
        pseudo_label(feats, sparse, topk=0, out_size=16)
