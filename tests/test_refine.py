"""Post-refinement (smis_jax.refine): the original's inference_w_post.py against a PyTorch run of its own loop on
rosinality's generator (draggan) with the golden tiny weights; our wplus and fs refinements (fs's spatial offset
against rosinality's generator with the block's output shifted); masks at any size."""

import io
import json
import os
import warnings

import jax.numpy as jnp
import jax
import numpy as np
import pytest

from smis_jax import data, labelers, labeling, refine
from smis_jax.errors import ConfigError, InvalidValueError
from smis_jax.io import load_generator

torch = pytest.importorskip("torch")
F = torch.nn.functional

S, D, C, NC = 12, 64, 32, 4  # golden tiny128: n_latent, style_dim, 64x64 feature channels; 4 classes
ITERS = 12  # the quick parity run; the slow test runs the original's 201
# float32 through Adam: Adam's first steps are +-lr per coefficient whatever the gradient's size, so a gradient
# component near zero can flip between implementations; the loss curve is insensitive to that, the codes less so.
LOSS_TOL = 1e-5  # absolute, on every iteration's loss (losses are ~1)
CODES_TOL = 1e-3  # max |ours - torch| / max |torch| on the final W+


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def torch_gen(golden):
    """rosinality's Generator (as draggan vendors it) with the golden tiny channel table and g_ema weights; its
    forward stops at the 64x64 features (the loss needs nothing above; the original renders the image too)."""
    os.environ.pop("CUDA_HOME", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pytest.importorskip("draggan.deprecated.stylegan2.model")
    channels = {int(k): v for k, v in json.loads((golden / "stylegan2_tiny128.json").read_text())["channels"].items()}

    class Tiny(model.Generator):
        def __setattr__(self, name, value):  # the constructor's channel table -> the golden one
            super().__setattr__(name, dict(channels) if name == "channels" else value)

    g = Tiny(128, D, 4).eval()
    g.load_state_dict(torch.load(golden / "stylegan2_tiny128.pt", map_location="cpu", weights_only=False)["g_ema"])
    for p in g.parameters():
        p.requires_grad_(False)
    tap = {}

    def hook(module, args, out):
        tap["f"] = out
        raise _Stop

    g.convs[7].register_forward_hook(hook)

    def features(codes):
        try:
            g([codes], input_is_latent=True, randomize_noise=False)
        except _Stop:
            pass
        return tap["f"]

    return g, features


@pytest.fixture(scope="module")
def gen(golden):
    return load_generator(golden / "stylegan2_tiny128.pt")


@pytest.fixture(scope="module")
def case(torch_gen):
    """The script's PCA in torch (1024 sampled W+, bmm covariance, eigh for symeig), two encoder-like W+ codes,
    prototypes (one class absent: a zero vector, as the original's), two masks at 256."""
    g, _ = torch_gen
    rng = np.random.default_rng(0)
    with torch.no_grad():
        vecs = g.style(torch.from_numpy(rng.standard_normal((1024, D)).astype(np.float32)))[:, None].repeat(1, S, 1)
        n = vecs.shape[0]
        mu = vecs.mean(dim=0).unsqueeze(0)
        dev = vecs - mu.repeat((n, 1, 1))
        cov = torch.bmm(dev.permute(1, 2, 0), dev.permute(1, 0, 2)) / n
        values, vectors = torch.linalg.eigh(cov)
        w = g.style(torch.from_numpy(rng.standard_normal((2, D)).astype(np.float32)))
    codes = w[:, None].repeat(1, S, 1) + 0.3 * torch.from_numpy(rng.standard_normal((2, S, D)).astype(np.float32))
    protos = rng.standard_normal((NC, C)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    protos[3] = 0
    labels = np.zeros((2, 256, 256), np.int64)
    labels[0, :128] = 1
    labels[0, 100:200, 50:150] = 2
    labels[1, :, 128:] = 3
    labels[1, 30:90, 30:90] = 1
    return dict(mu=mu, vectors=vectors, values=values, codes=codes, protos=protos, labels=labels, w_samples=vecs[:, 0])


def _optimization_loss(feature_map, x, c, label_nc, mask_classes):
    """The script's optimization_loss, line for line."""
    b, ch, h, w = feature_map.shape
    hw = h * w
    feature_map_reshaped = feature_map.reshape(b, ch, hw)
    x_reshaped = F.interpolate(x.float(), size=(h, w)).reshape(b, label_nc, hw).permute(0, 2, 1)
    x_c = torch.bmm(x_reshaped, c).permute(0, 2, 1)
    mask = torch.ones_like(feature_map_reshaped)
    for cid in mask_classes:
        mask.permute(0, 2, 1)[x_reshaped[:, :, cid] == 1] = 0.0
    return 1.0 - F.cosine_similarity(mask * feature_map_reshaped, mask * x_c, dim=1).mean()


def _torch_original(torch_gen, case, i, sparse, iters):
    """The script's loop for mask i (st_dim 504:512 -> D-8:D, L = 8, Adam lr 0.05): (losses, final codes)."""
    _, features = torch_gen
    mu, eigenvectors = case["mu"], case["vectors"]
    x = F.one_hot(torch.from_numpy(case["labels"][i:i + 1]), NC).permute(0, 3, 1, 2).float()
    codes = case["codes"][i:i + 1].clone()
    initial_codes = codes.clone().detach()
    st_dim, ed_dim, L = D - 8, D, 8
    g_partial = torch.bmm(torch.inverse(eigenvectors), (codes - mu).permute(1, 2, 0))
    optimized_codes = torch.nn.Parameter(g_partial[:1, st_dim:ed_dim].clone().data)
    optimizer = torch.optim.Adam([optimized_codes], lr=0.05)
    c = torch.from_numpy(case["protos"]).unsqueeze(0)

    def rebuild():
        g = torch.cat([g_partial[:1, :st_dim], optimized_codes, g_partial[:1, ed_dim:]], dim=1).repeat((S, 1, 1))
        codes = torch.bmm(eigenvectors, g).permute(2, 0, 1) + mu
        codes[:, L:] = initial_codes[:, L:]
        return codes

    losses = []
    for _ in range(iters):
        loss = _optimization_loss(features(rebuild()), x, c, NC, [0] if sparse else [])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses), rebuild().detach().numpy()[0]


def _ours(gen, case, sparse, iters):
    pca = refine.PCA(case["mu"][0].numpy(), case["vectors"].numpy(), case["values"].numpy())
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.asarray([1, 1, 1, 0], bool))
    return refine.refine(gen, protos, case["codes"].numpy(), case["labels"], refine.Options("original", iters),
                         sparse=sparse, pca=pca)


def _check_parity(torch_gen, gen, case, sparse, iters):
    ours = _ours(gen, case, sparse, iters)  # both masks in one batched call
    assert ours.losses.shape == (2, iters + 1)
    for i in range(2):
        losses, codes = _torch_original(torch_gen, case, i, sparse, iters)
        assert np.max(np.abs(ours.losses[i, :iters] - losses)) < LOSS_TOL
        err = np.max(np.abs(np.asarray(ours.w_plus[i]) - codes)) / np.max(np.abs(codes))
        assert err < CODES_TOL, err
        assert losses[-1] < losses[0]  # the run did something


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_original_matches_the_script(torch_gen, gen, case, sparse):
    """Loss at every iteration and the final codes of our batched run equal the script's own loop per mask."""
    _check_parity(torch_gen, gen, case, sparse, ITERS)


# Known failure, measured 2026-12-07: over the script's full 201 iterations our loss curve leaves the script's by
# up to 2.5e-4 (first above 1e-5 at iteration 33, largest at 80, back to 1e-7 at the end; dense mask 0). The
# one-program fori_loop driver this replaced failed it too: both are float32 runs of the same maths whose rounding
# Adam amplifies mid-run. The ITERS-iteration test above holds 1e-5; the final codes' tolerance is not the issue.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="float32 trajectories drift 2.5e-4 from the script's mid-run (see comment)")
def test_original_matches_the_script_201_iterations(torch_gen, gen, case):
    _check_parity(torch_gen, gen, case, False, 201)


def test_original_rebuilds_layers_from_layer_zero(gen, case):
    """steps=0: layers 0..7 all become layer 0's code (the script's quirk), layers >= 8 stay the encoder's."""
    out = np.asarray(_ours(gen, case, False, 0).w_plus)
    codes = case["codes"].numpy()
    np.testing.assert_allclose(out[:, :8], np.repeat(codes[:, :1], 8, 1), atol=1e-4)
    np.testing.assert_array_equal(out[:, 8:], codes[:, 8:])


def test_pca_matches_torch(gen, case):
    """Our PCA of the same w samples: same mean and eigenvalues; the top-8 eigenvectors span the same directions."""
    pca = refine.pca_from_w(case["w_samples"].numpy(), S)
    assert pca.vectors.shape == (S, D, D) and pca.mean.shape == (S, D)
    np.testing.assert_allclose(pca.mean[3], case["mu"][0, 3].numpy(), atol=1e-6)
    np.testing.assert_allclose(pca.values[0], case["values"][0].numpy(), rtol=1e-3, atol=1e-7)
    overlap = np.abs(np.sum(pca.vectors[0][:, -8:] * case["vectors"][0].numpy()[:, -8:], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-4)
    own = refine.compute_pca(gen)
    assert refine.compute_pca(gen) is own  # cached per generator
    assert np.all(np.diff(own.values[0]) >= 0)  # ascending, as symeig


@pytest.mark.parametrize("size", [256, 200, 64, 100])
def test_labels_to_64_is_torch_nearest(size):
    labels = np.random.default_rng(size).integers(0, 5, (2, size, size))
    want = F.interpolate(torch.from_numpy(labels)[:, None].float(), size=(64, 64))[:, 0].numpy().astype(np.int32)
    np.testing.assert_array_equal(refine.labels_to_64(labels, 5), want)


def test_wplus_refinement_lowers_its_loss_and_stays_close(gen, case):
    """wplus: the label-space loss falls, more proximity keeps the codes closer, only chosen layers move, and a
    batched call equals separate calls."""
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.asarray([1, 1, 1, 0], bool))
    codes, labels = case["codes"].numpy(), case["labels"]
    loose = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 10, proximity=0.0))
    tight = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 10, proximity=100.0))
    assert np.all(loose.losses[:, -1] < loose.losses[:, 0])
    moved = lambda r: np.abs(np.asarray(r.w_plus) - codes).mean()  # noqa: E731
    assert moved(tight) < 0.5 * moved(loose)
    some = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 10, layers=(0, 1, 2)))
    np.testing.assert_array_equal(np.asarray(some.w_plus)[:, 3:], codes[:, 3:])
    assert np.abs(np.asarray(some.w_plus)[:, :3] - codes[:, :3]).max() > 0
    swapped = refine.refine(gen, protos, codes[::-1], labels[::-1], refine.Options("wplus", 10, proximity=0.0))
    np.testing.assert_allclose(np.asarray(swapped.w_plus[::-1]), np.asarray(loose.w_plus), atol=1e-5)


def test_generator_offsets_match_rosinality_with_the_block_output_shifted(gen, torch_gen, case):
    """fs's spatial latent: an offset added to the 8x8 block's output (after its second conv) gives the features
    rosinality's generator computes with that block's output shifted by a forward hook; no offset is the
    unchanged generator."""
    g, features = torch_gen
    codes = case["codes"]
    off = np.random.default_rng(7).standard_normal((2, 8, 8, gen.config.channel(8))).astype(np.float32) * 0.5
    handle = g.convs[1].register_forward_hook(lambda m, a, out: out + torch.from_numpy(off).permute(0, 3, 1, 2))
    try:
        with torch.no_grad():
            want = features(codes).permute(0, 2, 3, 1).numpy()
    finally:
        handle.remove()
    noise = list(gen.noises)[:gen.config.num_noise_layers(64)]
    got = labelers.label_features(gen.config, gen.params, jnp.asarray(codes.numpy()), noise, offsets={8: off})
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * np.abs(want).max())
    plain = labelers.label_features(gen.config, gen.params, jnp.asarray(codes.numpy()), noise)
    zero = labelers.label_features(gen.config, gen.params, jnp.asarray(codes.numpy()), noise,
                                   offsets={8: np.zeros_like(off)})
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(plain))
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 0.1
    with pytest.raises(ValueError, match=r"offsets\[8\] must be \(2 or 1, 8, 8, "):
        labelers.label_features(gen.config, gen.params, jnp.asarray(codes.numpy()), noise, offsets={8: off[..., :3]})
    with pytest.raises(ValueError, match="resolution 128 is not a block computed here"):
        labelers.label_features(gen.config, gen.params, jnp.asarray(codes.numpy()), noise,
                                offsets={128: np.zeros((2, 128, 128, 1), np.float32)})


def test_fs_refinement_goes_further_than_wplus(gen, case):
    """fs = wplus plus an 8x8 offset: it starts from wplus's loss (offset 0), ends lower at the same updates, the
    offset pays its proximity, a batch equals separate masks, and render() draws the refined codes with it."""
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.asarray([1, 1, 1, 0], bool))
    codes, labels = case["codes"].numpy(), case["labels"]
    wp = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 15))
    fs = refine.refine(gen, protos, codes, labels, refine.Options("fs", 15))
    assert wp.offsets is None and set(fs.offsets) == {8}
    assert fs.offsets[8].shape == (2, 8, 8, gen.config.channel(8))
    np.testing.assert_allclose(fs.losses[:, 0], wp.losses[:, 0], rtol=1e-6)
    assert np.all(fs.losses[:, -1] < wp.losses[:, -1] - 0.02), (fs.losses[:, -1], wp.losses[:, -1])
    tight = refine.refine(gen, protos, codes, labels, refine.Options("fs", 15, feature_proximity=1e4))
    size = lambda r: float(np.abs(np.asarray(r.offsets[8])).mean())  # noqa: E731
    assert size(tight) < 0.2 * size(fs)
    swapped = refine.refine(gen, protos, codes[::-1], labels[::-1], refine.Options("fs", 15))
    np.testing.assert_allclose(np.asarray(swapped.offsets[8][::-1]), np.asarray(fs.offsets[8]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(swapped.w_plus[::-1]), np.asarray(fs.w_plus), atol=1e-5)
    with_offset = np.asarray(refine.render(gen, fs.w_plus, 64, fs.offsets))
    without = np.asarray(refine.render(gen, fs.w_plus, 64))
    assert np.abs(with_offset - without).max() > 1e-2
    # the default (what synthesize and the editor run): the offset alone, the encoder's codes kept exactly
    alone = refine.refine(gen, protos, codes, labels, refine.default_options("fs", 15))
    assert refine.default_options("fs").layers == () and alone.options.layers == ()
    np.testing.assert_array_equal(np.asarray(alone.w_plus), codes)
    assert np.all(alone.losses[:, -1] < alone.losses[:, 0])
    # sparse masks: class 0 (not annotated) is ignored as by wplus, so the first loss is wplus's there too
    sparse_fs = refine.refine(gen, protos, codes, labels, refine.Options("fs", 3), sparse=True)
    sparse_wp = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 3), sparse=True)
    np.testing.assert_allclose(sparse_fs.losses[:, 0], sparse_wp.losses[:, 0], rtol=1e-6)
    assert not np.allclose(sparse_fs.losses[:, 0], fs.losses[:, 0])
    sixteen = refine.refine(gen, protos, codes, labels, refine.Options("fs", 2, feature_res=16))
    assert sixteen.offsets[16].shape == (2, 16, 16, gen.config.channel(16))
    with pytest.raises(InvalidValueError, match="feature_res must be a block of 8, 16, 32 or 64, got 12"):
        refine.Options("fs", feature_res=12)
    with pytest.raises(InvalidValueError, match="feature_lr must be > 0"):
        refine.Options("fs", feature_lr=0)


def test_wplus_loss_ignores_class_zero_when_sparse():
    """Sparse: class-0 pixels do not count; a pixel of an absent class does not count either."""
    f = jnp.asarray(np.random.default_rng(1).standard_normal((1, 64, 64, 3)), jnp.float32)
    protos = jnp.eye(3, dtype=jnp.float32)
    present = jnp.asarray([True, True, False])
    lab = np.zeros((1, 64, 64), np.int32)
    lab[0, :8] = 1
    lab[0, 8:16] = 2
    loss = jax.jit(refine.wplus_loss)
    full = loss(f, jnp.asarray(lab), protos, present, jnp.bool_(False), 0.1)
    sparse = loss(f, jnp.asarray(lab), protos, present, jnp.bool_(True), 0.1)
    only1 = loss(f[:, :8], jnp.asarray(lab[:, :8]), protos, present, jnp.bool_(False), 0.1)
    np.testing.assert_allclose(sparse, only1, rtol=1e-6)
    assert not np.allclose(full, sparse)


def _np_ce(features, labels, weight, bias, present, shifted):
    """Mean cross-entropy per mask in float64: rows = classes (dense) or classes 1.. (``shifted``, class 0 skipped)."""
    out = []
    for f, lab in zip(np.asarray(features, np.float64), labels):
        logits = f.reshape(-1, f.shape[-1]) @ np.asarray(weight, np.float64) + np.asarray(bias, np.float64)
        logits[:, ~present] = -np.inf
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        terms = []
        for q, c in enumerate(lab.reshape(-1)):
            row = c - 1 if shifted else c
            if row >= 0 and present[row]:
                terms.append(-logp[q, row])
        out.append(np.mean(terms))
    return np.asarray(out)


@pytest.mark.parametrize("shifted", [False, True], ids=["dense", "sparse"])
def test_linear_loss_is_the_cross_entropy_of_the_labeller(shifted):
    """The labeller-scored wplus loss against a float64 NumPy cross-entropy: dense rows are classes 0..L-1, sparse
    rows classes 1..L-1 with class 0 (not annotated) skipped; classes the labeller never saw do not count."""
    rng = np.random.default_rng(3)
    f = rng.standard_normal((2, 64, 64, 5)).astype(np.float32)
    weight = rng.standard_normal((5, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    present = np.asarray([True, False, True, True])
    lab = rng.integers(0, 5 if shifted else 4, (2, 64, 64)).astype(np.int32)
    got = jax.jit(refine.linear_loss)(jnp.asarray(f), jnp.asarray(lab), weight, bias, jnp.asarray(present),
                                      jnp.bool_(shifted), jnp.bool_(shifted))
    np.testing.assert_allclose(np.asarray(got), _np_ce(f, lab, weight, bias, present, shifted), rtol=1e-5)


@pytest.fixture(scope="module")
def linear_labeler(gen, case):
    """A linear labeller fitted on the multi-scale features of two other codes drawn with the case's masks."""
    taps = labelers.taps_of("linear", gen.config)
    w = np.asarray(gen.mapping(jnp.asarray(np.random.default_rng(5).standard_normal((2, D)), jnp.float32)))
    codes = jnp.broadcast_to(jnp.asarray(w)[:, None], (2, S, D))
    noise = list(gen.noises)[:gen.config.num_noise_layers(64)]
    features = labelers.label_features(gen.config, gen.params, codes, noise, taps)
    return labelers.fit("linear", features, data.onehot(jnp.asarray(case["labels"]), NC))


def test_wplus_scored_by_the_linear_labeller(gen, case, linear_labeler):
    """scorer 'labeler': the loss is the labeller's cross-entropy, it falls, the labeller's own labels of the refined
    codes agree with the masks more than before; 'auto' picks it for a linear labeller and the prototypes without."""
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.ones(NC, bool))
    codes, labels = case["codes"].numpy(), case["labels"]
    r = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 20, proximity=0.0, scorer="labeler"),
                      labeler=linear_labeler)
    assert np.all(r.losses[:, -1] < 0.7 * r.losses[:, 0])
    noise = list(gen.noises)[:gen.config.num_noise_layers(64)]
    feats = lambda w: labelers.label_features(gen.config, gen.params, jnp.asarray(w), noise, linear_labeler.taps)  # noqa: E731
    lab64 = refine.labels_to_64(labels, NC)
    w_, b_, p_ = (np.asarray(a) for a in (linear_labeler.weight, linear_labeler.bias, linear_labeler.present))
    np.testing.assert_allclose(r.losses[:, 0], _np_ce(feats(codes), lab64, w_, b_, p_, False), rtol=1e-4)
    agree = lambda w: (np.asarray(labelers.label(feats(w), linear_labeler, out_size=64)) == lab64).mean()  # noqa: E731
    assert agree(r.w_plus) > agree(codes) + 0.1
    auto = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 2, proximity=0.0),
                         labeler=linear_labeler)
    np.testing.assert_allclose(auto.losses[:, 0], r.losses[:, 0], rtol=1e-6)
    cosine = refine.refine(gen, protos, codes, labels, refine.Options("wplus", 2, proximity=0.0))
    assert not np.allclose(cosine.losses[:, 0], r.losses[:, 0])
    assert refine.resolve_scorer(refine.Options("wplus"), linear_labeler) == "labeler"
    assert refine.resolve_scorer(refine.Options("wplus"), labelers.as_labeler(protos)) == "prototypes"
    assert refine.resolve_scorer(refine.Options("original"), linear_labeler) == "prototypes"
    # a run whose labeller keeps no prototypes (a real preset's linear run) refines with the labeller alone
    alone = refine.refine(gen, None, codes, labels, refine.Options("wplus", 20, proximity=0.0), labeler=linear_labeler)
    np.testing.assert_allclose(np.asarray(alone.w_plus), np.asarray(r.w_plus), atol=1e-6)
    with pytest.raises(ConfigError, match="refinement 'original' .* there are none here .*linear"):
        refine.refine(gen, None, codes, labels, refine.Options("original", 1), labeler=linear_labeler)
    with pytest.raises(ConfigError, match="needs the run's linear labeller.*got paper"):
        refine.refine(gen, protos, codes, labels, refine.Options("wplus", 1, scorer="labeler"),
                      labeler=labelers.as_labeler(protos))
    with pytest.raises(InvalidValueError, match="cannot score sparse masks"):
        refine.refine(gen, protos, codes, labels, refine.Options("wplus", 1, scorer="labeler"), sparse=True,
                      labeler=linear_labeler)
    with pytest.raises(InvalidValueError, match="scorer 'labeler' is for --refine wplus or fs"):
        refine.Options("original", scorer="labeler")
    with pytest.raises(InvalidValueError, match="scorer must be one of"):
        refine.Options("wplus", scorer="oracle")


def test_bad_input_is_a_user_error(gen, case):
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.ones(NC, bool))
    codes = case["codes"].numpy()
    with pytest.raises(InvalidValueError, match="refinement method"):
        refine.Options("latent")
    with pytest.raises(InvalidValueError, match="steps"):
        refine.Options("wplus", -1)
    with pytest.raises(InvalidValueError, match="class ids in 0..3"):
        refine.refine(gen, protos, codes, case["labels"] + 1)
    with pytest.raises(InvalidValueError, match="layers must be in 0..11"):
        refine.refine(gen, protos, codes, case["labels"], refine.Options("wplus", 1, layers=(12,)))
    with pytest.raises(InvalidValueError, match="codes must be"):
        refine.refine(gen, protos, codes[:, :5], case["labels"])


def test_sparse_prototypes_become_dense_class_means():
    v = np.asarray([[1, 0], [0, 1], [1, 0]], np.float32)
    sp = labeling.SparsePrototypes(vectors=jnp.asarray(v), classes=jnp.asarray([1, 1, 2]), n_classes=3)
    d = refine.dense_prototypes(sp)
    np.testing.assert_allclose(d.vectors, [[0, 0], [2 ** -0.5, 2 ** -0.5], [1, 0]], atol=1e-6)
    np.testing.assert_array_equal(d.present, [False, True, True])


def test_refine_request_parsing():
    from smis_jax.app import editor as ed

    domain = ed.EditorDomain("x", 3, "dense", np.zeros((3, 3), np.uint8), ("a", "b", "c"))
    mask = ed.ids_json(np.ones((256, 256), np.uint8))
    labels, method, steps = ed.parse_refine(json.dumps({"mask": mask, "method": "original", "steps": 7}).encode(),
                                            domain)
    assert (method, steps, labels.shape) == ("original", 7, (256, 256))
    for bad, match in (({"method": "pca"}, "'method'"), ({"steps": -1}, "'steps'"), ({"steps": 2.5}, "'steps'")):
        with pytest.raises(ed.InputError, match=match):
            ed.parse_refine(json.dumps({"mask": mask, **bad}).encode(), domain)


def _write_export(out, golden, prototypes, offset_res=0):
    """An export as train.run writes it (run record, the labeller's state) with the golden generator and a random
    tiny encoder (4 classes) of a domain without built-in shots; ``offset_res``: with an offset head there."""
    import dataclasses
    import types

    from smis_jax import export
    from smis_jax.nets import psp

    gen = load_generator(golden / "stylegan2_tiny128.pt")
    enc_cfg = dataclasses.replace(psp.EncoderConfig.golden(input_nc=NC, style_num=S), offset_res=offset_res,
                                  offset_channels=gen.config.channel(offset_res) if offset_res else 0)
    shapes = psp.abstract_variables(enc_cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.05, a.shape).astype(np.float32), shapes["params"])
    stats = jax.tree_util.tree_map_with_path(
        lambda path, a: np.full(a.shape, float("var" in str(path[-1])), np.float32), shapes["batch_stats"])
    latent_avg = np.broadcast_to(np.asarray(gen.truncation_latent()), (S, D))
    return export.write(out, enc_cfg, types.SimpleNamespace(params=params, batch_stats=stats), gen, latent_avg,
                        {"dataset_type": "tiny4", "label_nc": NC}, run={"domain": "tiny4", "train": {"seed": 0}},
                        prototypes=prototypes)


@pytest.fixture(scope="module")
def dense_export(golden, tmp_path_factory, case):
    """An export with the paper's dense prototypes."""
    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.asarray([1, 1, 1, 0], bool))
    return _write_export(tmp_path_factory.mktemp("dense") / "export", golden, protos)


@pytest.mark.slow
def test_cli_and_editor_refine(dense_export, case, tmp_path):
    """synthesize --refine writes the refined image (the decoded refine() result) and records the run; the editor's
    refine gives the same image for the same mask."""
    from PIL import Image

    from smis_jax import export, synthesize, viz
    from smis_jax.app import editor as ed

    labels = case["labels"][:1].astype(np.uint8)
    Image.fromarray(labels[0]).save(tmp_path / "m.png")
    assert synthesize.main(["--checkpoint", str(dense_export), "--masks", str(tmp_path / "m.png"), "--out",
                            str(tmp_path / "out"), "--refine", "wplus", "--refine-steps", "3",
                            "--batch-size", "1"]) == 0
    info = json.loads((tmp_path / "out" / "synthesize.json").read_text())
    assert info["refine"]["method"] == "wplus" and info["refine"]["steps"] == 3
    cli = np.asarray(Image.open(tmp_path / "out" / "m.png"))
    run = export.load(dense_export)
    codes = synthesize.encode(run.pipeline, jnp.asarray(labeling.labels_to_onehot(jnp.asarray(labels), NC)))
    res = refine.refine(run.pipeline.generator, refine.prototypes_for(run)[0], codes + run.pipeline.latent_avg, labels,
                        refine.default_options("wplus", 3))
    want = viz.to_uint8(np.asarray(refine.render(run.pipeline.generator, res.w_plus))[0])
    assert np.abs(cli.astype(int) - want.astype(int)).max() <= 1  # w+ - latent_avg + latent_avg rounds
    plain = synthesize.decode(run.pipeline, codes, jax.random.key(0))
    assert np.abs(np.asarray(plain) - np.asarray(refine.render(run.pipeline.generator, res.w_plus))).max() > 1e-3

    editor = ed.Editor(dense_export, variants=0)
    assert editor.info()["refine"] == list(refine.METHODS)
    r = editor.refine(labels[0], "wplus", 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.image))), cli)
    assert r.loss[1] < r.loss[0]

    # fs: the image is drawn with the refined codes and the spatial offset, by the CLI and the editor alike
    assert synthesize.main(["--checkpoint", str(dense_export), "--masks", str(tmp_path / "m.png"), "--out",
                            str(tmp_path / "fs"), "--refine", "fs", "--refine-steps", "3", "--batch-size", "1"]) == 0
    cli_fs = np.asarray(Image.open(tmp_path / "fs" / "m.png"))
    res = refine.refine(run.pipeline.generator, refine.prototypes_for(run)[0], codes + run.pipeline.latent_avg, labels,
                        refine.default_options("fs", 3))
    want = viz.to_uint8(np.asarray(refine.render(run.pipeline.generator, res.w_plus, offsets=res.offsets))[0])
    assert np.abs(cli_fs.astype(int) - want.astype(int)).max() <= 1
    bare = viz.to_uint8(np.asarray(refine.render(run.pipeline.generator, res.w_plus))[0])
    assert np.abs(cli_fs.astype(int) - bare.astype(int)).max() > 1  # the offset is drawn
    r = editor.refine(labels[0], "fs", 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.image))), cli_fs)


def test_cli_refine_without_prototypes_says_so(tmp_path, capsys):
    """A converted pSp checkpoint (no prototypes/) with --refine: one line naming the folder, before any loading."""
    from PIL import Image

    from smis_jax import synthesize

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "ckpt").mkdir()
    code = synthesize.main(["--checkpoint", str(tmp_path / "ckpt"), "--masks", str(tmp_path / "m.png"), "--out",
                            str(tmp_path / "out"), "--refine", "original"])
    assert code == 2
    assert "--refine needs the class prototypes" in capsys.readouterr().err



def test_a_linear_run_without_prototypes_refines_with_wplus(golden, linear_labeler, case, tmp_path, capsys):
    """A linear-labeller export of a domain without built-in shots keeps no prototypes: synthesize --refine wplus
    scores with the labeller (and records it), --refine original says in one line why it cannot, and the editor
    offers wplus only."""
    from PIL import Image

    from smis_jax import synthesize
    from smis_jax.app import editor as ed

    path = _write_export(tmp_path / "export", golden, linear_labeler)
    Image.fromarray(case["labels"][0].astype(np.uint8)).save(tmp_path / "m.png")
    args = ["--checkpoint", str(path), "--masks", str(tmp_path / "m.png"), "--refine-steps", "2", "--batch-size", "1"]
    assert synthesize.main([*args, "--out", str(tmp_path / "a"), "--refine", "wplus"]) == 0
    info = json.loads((tmp_path / "a" / "synthesize.json").read_text())
    assert info["refine"]["scorer"] == "labeler" and info["refine"]["final_loss"][0] > 0
    capsys.readouterr()
    assert synthesize.main([*args, "--out", str(tmp_path / "b"), "--refine", "original"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refinement 'original'" in err[0] and "linear" in err[0], err
    assert synthesize.main([*args, "--out", str(tmp_path / "c"), "--refine", "wplus", "--refine-scorer",
                            "prototypes"]) == 2
    assert synthesize.main([*args, "--out", str(tmp_path / "d"), "--refine", "fs"]) == 0
    info = json.loads((tmp_path / "d" / "synthesize.json").read_text())
    assert info["refine"]["method"] == "fs" and info["refine"]["scorer"] == "labeler"
    editor = ed.Editor(path, variants=0)
    assert editor.info()["refine"] == ["wplus", "fs"]
    with pytest.raises(ed.InputError, match="'original' needs the paper's prototypes"):
        editor.refine(case["labels"][0].astype(np.uint8), "original", 1)


def test_an_offset_head_export_draws_its_offset_everywhere(golden, case, tmp_path):
    """An export whose encoder has an offset head (train.run --offset-res) records it, and every user of the
    encoder draws it: the library (synthesize = decode of encode_with_offsets, styles included), the CLI, the
    editor, and refinement (wplus keeps the offset fixed in its loss and its result; fs starts from it)."""
    from PIL import Image

    from smis_jax import export, synthesize, viz
    from smis_jax.app import editor as ed

    protos = labeling.DensePrototypes(vectors=jnp.asarray(case["protos"]), present=jnp.asarray([1, 1, 1, 0], bool))
    path = _write_export(tmp_path / "export", golden, protos, offset_res=16)
    run = export.load(path)
    assert run.pipeline.encoder.config.offset_res == 16
    labels = case["labels"][:1].astype(np.uint8)
    onehot = labeling.labels_to_onehot(jnp.asarray(labels), NC)
    codes, offsets = synthesize.encode_with_offsets(run.pipeline, onehot)
    assert set(offsets) == {16} and offsets[16].shape == (1, 16, 16, run.pipeline.generator.config.channel(16))
    key = jax.random.key(0)
    image = synthesize.synthesize(run.pipeline, onehot, key)
    np.testing.assert_array_equal(image, synthesize.decode(run.pipeline, codes, key, offsets=offsets))
    bare = synthesize.decode(run.pipeline, codes, key)
    assert float(jnp.abs(image - bare).max()) > 1e-2  # the offset is drawn
    styles = synthesize.synthesize(run.pipeline, onehot, key, styles=2)
    np.testing.assert_array_equal(styles, synthesize.decode(run.pipeline, codes, key, styles=2, offsets=offsets))

    Image.fromarray(labels[0]).save(tmp_path / "m.png")
    args = ["--checkpoint", str(path), "--masks", str(tmp_path / "m.png"), "--batch-size", "1"]
    assert synthesize.main([*args, "--out", str(tmp_path / "plain")]) == 0
    cli = np.asarray(Image.open(tmp_path / "plain" / "m.png"))
    assert np.array_equal(cli, viz.to_uint8(np.asarray(image[0])))
    editor = ed.Editor(path, variants=0)
    shown = np.asarray(Image.open(io.BytesIO(editor.update(labels[0]).image)))
    assert np.array_equal(shown, cli)

    w0 = codes + run.pipeline.latent_avg
    wp = refine.refine(run.pipeline.generator, protos, w0, labels, refine.Options("wplus", 0), offsets=offsets)
    wp_bare = refine.refine(run.pipeline.generator, protos, w0, labels, refine.Options("wplus", 0))
    assert wp.offsets is offsets or np.array_equal(wp.offsets[16], offsets[16])
    assert not np.allclose(wp.losses[:, 0], wp_bare.losses[:, 0])  # its loss scores the image with the offset
    fs = refine.refine(run.pipeline.generator, protos, w0, labels, refine.Options("fs", 0), offsets=offsets)
    np.testing.assert_allclose(fs.losses[:, 0], wp.losses[:, 0], rtol=1e-6)  # fs starts where the encoder is
    np.testing.assert_array_equal(fs.offsets[16], offsets[16])
    moved = refine.refine(run.pipeline.generator, protos, w0, labels, refine.default_options("fs", 3),
                          offsets=offsets)
    assert set(moved.offsets) == {8, 16} and np.array_equal(moved.offsets[16], offsets[16])
    assert moved.losses[0, -1] < moved.losses[0, 0]
    assert synthesize.main([*args, "--out", str(tmp_path / "fs"), "--refine", "fs", "--refine-steps", "3"]) == 0
    want = viz.to_uint8(np.asarray(refine.render(run.pipeline.generator, moved.w_plus, offsets=moved.offsets))[0])
    assert np.abs(np.asarray(Image.open(tmp_path / "fs" / "m.png")).astype(int) - want.astype(int)).max() <= 1
    r = editor.refine(labels[0], "fs", 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.image))),
                          np.asarray(Image.open(tmp_path / "fs" / "m.png")))


def test_add_offsets_sums_a_shared_block_and_merges_the_rest():
    a, b = {8: jnp.ones((1, 8, 8, 2))}, {8: 2 * jnp.ones((1, 8, 8, 2)), 16: jnp.zeros((1, 16, 16, 1))}
    both = refine.add_offsets(a, b)
    assert set(both) == {8, 16} and float(both[8][0, 0, 0, 0]) == 3.0 and both[16] is b[16]
    assert refine.add_offsets(None, a) is a and refine.add_offsets(a, None) is a
    assert refine.add_offsets(None, None) is None
