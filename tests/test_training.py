"""The training step: data parallelism, one compile, exact resume from an orbax checkpoint, W+ sampling."""

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from smis_jax import data, labeling
from smis_jax.io import load_generator
from smis_jax.nets.psp import EncoderConfig
from smis_jax.training import (
    Checkpointer,
    StepConfig,
    abstract_train_state,
    data_mesh,
    init_train_state,
    make_train_step,
    sample_latents,
)
from conftest import count_traces

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator(golden):
    return load_generator(golden / "stylegan2_tiny128.pt")


def _step_config(generator, n_classes):
    c = generator.config
    enc = EncoderConfig(input_nc=n_classes, style_num=c.n_latent, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                        style_dim=c.style_dim, se_reduction=8)
    return StepConfig(generator=c, encoder=enc, batch_size=2)


def _prototypes(generator, samples, mode):
    folder, n_classes, names = (("CelebAMask-HQ", 19, ["0", "1"]) if mode == "dense"
                                else ("CelebALandmark-HQ", 71, ["9995", "9996"]))
    labels = np.stack([data.read_label(samples / folder / "train" / "labels" / f"{n}.png", n_classes) for n in names])
    w = jnp.broadcast_to(generator.latent_avg, (2, generator.config.n_latent, generator.config.style_dim))
    _, features = generator.synthesize(w, key=jax.random.key(1), until_res=64)
    return labeling.prototypes(features, data.onehot(labels, n_classes), mode=mode), n_classes


def _run(cfg, generator, protos, devices, steps, state=None):
    mesh = data_mesh(devices)
    replicated = NamedSharding(mesh, P())
    latent_avg = jnp.broadcast_to(generator.latent_avg, (cfg.generator.n_latent, cfg.generator.style_dim))
    state = init_train_state(cfg, seed=0) if state is None else state
    state, gen_params, protos, latent_avg = jax.device_put((state, generator.params, protos, latent_avg), replicated)
    step = make_train_step(cfg, mesh)
    losses, retraced = [], 0
    for i in range(steps):
        with count_traces() as traced:
            state, metrics = step(state, gen_params, protos, latent_avg)
            losses.append(float(metrics["loss"]))
        retraced += traced() if i else 0
    return jax.device_get(state), losses, retraced


# Sparse labelling under the mesh is the slow variant: the data-parallel step is the same code for both modes.
@pytest.mark.parametrize("mode", ["dense", pytest.param("sparse", marks=pytest.mark.slow)])
def test_two_devices_match_one(generator, samples, mode):
    assert jax.device_count() >= 2, "conftest forces two CPU devices"
    protos, n_classes = _prototypes(generator, samples, mode)
    cfg = _step_config(generator, n_classes)
    one, losses_one, _ = _run(cfg, generator, protos, jax.devices()[:1], steps=2)
    two, losses_two, retraced = _run(cfg, generator, protos, jax.devices()[:2], steps=2)
    # The same samples, labels and updates; only the order of the cross-device sums differs.
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(two.step) == 2
    assert retraced == 0  # compiled once for both steps: no retrace


def test_resume_from_checkpoint_is_exact(generator, samples, tmp_path):
    protos, n_classes = _prototypes(generator, samples, "dense")
    cfg = _step_config(generator, n_classes)
    straight, losses, _ = _run(cfg, generator, protos, jax.devices()[:1], steps=4)

    half, _, _ = _run(cfg, generator, protos, jax.devices()[:1], steps=2)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(half, protos, {"note": "test"})
    ckpt.wait()
    ckpt.close()
    del half

    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 2
    restored, restored_protos, meta = ckpt.restore(abstract_train_state(cfg))
    ckpt.close()
    assert meta["step"] == 2 and meta["note"] == "test"
    np.testing.assert_array_equal(restored_protos.protos.vectors, protos.vectors)
    resumed, resumed_losses, _ = _run(cfg, generator, restored_protos, jax.devices()[:1], steps=2, state=restored)
    assert resumed_losses == losses[2:]
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_array_equal(a, b)  # optimizer state, BN statistics, step and key included


def test_wplus_sampling_normalises_each_layer_over_features(generator):
    c = generator.config
    cfg = StepConfig(generator=c, encoder=EncoderConfig(input_nc=2, style_num=c.n_latent, style_dim=c.style_dim),
                     batch_size=2, train_wplus=True)
    key = jax.random.key(5)
    w_plus = sample_latents(cfg, generator.params, key)
    assert w_plus.shape == (2, c.n_latent, c.style_dim)
    # Each layer's w is the mapping of its own z (PixelNorm over the 512 features, not over the layers).
    z = jax.random.normal(key, (2 * c.n_latent, c.style_dim))
    np.testing.assert_allclose(w_plus.reshape(-1, c.style_dim), generator.mapping(z), rtol=1e-5, atol=1e-6)
    assert not np.allclose(w_plus[:, 0], w_plus[:, 1])
    w = sample_latents(cfg.__class__(**{**cfg.__dict__, "train_wplus": False}), generator.params, key)
    np.testing.assert_array_equal(w[:, 0], w[:, -1])  # W: one w broadcast to every layer


def test_batch_must_split_over_devices(generator):
    c = generator.config
    cfg = StepConfig(generator=c, encoder=EncoderConfig(input_nc=2, style_num=c.n_latent, style_dim=c.style_dim),
                     batch_size=3)
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        make_train_step(cfg, data_mesh(jax.devices()[:2]))


def test_encoder_must_fit_generator(generator):
    c = generator.config
    with pytest.raises(ValueError, match="encoder produces"):
        StepConfig(generator=c, encoder=EncoderConfig(input_nc=2, style_num=c.n_latent + 1, style_dim=c.style_dim),
                   batch_size=2)


def test_non_finite_loss_stops_and_names_the_step():
    from smis_jax.experiment import _mean_metrics
    from smis_jax.training import TrainingError

    metrics = [{"loss": jnp.float32(0.5)}, {"loss": jnp.float32(0.4)}, {"loss": jnp.float32(np.nan)}]
    with pytest.raises(TrainingError, match="non-finite loss nan at step 13"):
        _mean_metrics(metrics, first_step=10)
    assert _mean_metrics(metrics[:2], first_step=10) == {"loss": pytest.approx(0.45)}


_FAILING_SAVE = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from smis_jax import labeling
from smis_jax.training import Checkpointer, TrainingError, TrainState

def state(step):  # a training state's shape, with 300 KB of parameters (numpy: nothing to compile)
    params = {"w": np.random.default_rng(step).standard_normal((300, 256), np.float32)}  # incompressible
    return TrainState(np.int32(step), params, {}, {"mu": params}, np.zeros(2, np.uint32))

protos = labeling.DensePrototypes(np.eye(2, 32, dtype=np.float32), np.ones(2, bool))
ckpt = Checkpointer(Path(sys.argv[1]))
ckpt.save_now(state(10), protos, {})
# The "before" snapshot, taken before the refused save: every file of checkpoint 10 and its SHA-256.
import hashlib, json
before = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (Path(sys.argv[1]) / "10").rglob("*") if p.is_file()}
Path(sys.argv[2]).write_text(json.dumps(before))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    ckpt.save_now(state(20), protos, {})
except TrainingError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def test_a_save_the_disk_refuses_is_one_line_and_keeps_the_earlier_checkpoint(tmp_path):
    """A Checkpointer save that the operating system refuses (the process's file-size limit: EFBIG, as a full disk
    would refuse it) is one TrainingError line naming the step, the folder, the reason and the intact checkpoint,
    with no background tracebacks; the earlier checkpoint is byte for byte as it was. (test_pipeline's slow test does
    this to a real train.run mid-run and resumes it.)"""
    import subprocess
    import sys

    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # the cache's own writes would meet the limit
    snapshot = tmp_path / "before.json"  # outside the checkpoint folder, written before the failing save
    proc = subprocess.run([sys.executable, "-c", _FAILING_SAVE, str(tmp_path / "ckpt"), str(snapshot)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"saving checkpoint 20 in {tmp_path / 'ckpt'} failed (") and \
        "File too large" in lines[0] and "the newest intact checkpoint is step 10" in lines[0], lines[0]
    before = json.loads(snapshot.read_text())
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() == 10
    ckpt.close()
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "ckpt" / "10").rglob("*")
             if p.is_file()}
    assert before and after == before  # the same files, byte for byte


# ---------------------------------------------------------------------------------------------------------------
# The encoder's input at 64x64 and the label-space loss (beyond the paper).

@pytest.mark.parametrize("term", ["label", "image"])
def test_step_at_mask_size_64_with_a_term_beyond_the_paper(generator, samples, term):
    """Masks and labels at 64x64 reach the encoder, and the label-space (or image-space) term joins the W+ loss with
    its weight. (Without a weight the step is the paper's: the other tests of this file run it.)"""
    protos, n_classes = _prototypes(generator, samples, "dense")
    c = generator.config
    enc = EncoderConfig(input_nc=n_classes, style_num=c.n_latent, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                        style_dim=c.style_dim, se_reduction=8, input_size=64)
    ours = StepConfig(generator=c, encoder=enc, batch_size=2, **{f"{term}_lambda": 0.5})
    latent_avg = jnp.broadcast_to(generator.latent_avg, (c.n_latent, c.style_dim))
    state, m = make_train_step(ours, data_mesh(jax.devices()[:1]))(init_train_state(ours, 0), generator.params, protos,
                                                                    latent_avg)
    np.testing.assert_allclose(m["loss"], m["loss_l2"] + 0.5 * m[f"loss_{term}"], rtol=1e-5)
    assert 0 < float(m["loss_l2"]) < 10 and int(state.step) == 1
    assert f"loss_{'image' if term == 'label' else 'label'}" not in m
    # the golden generator's random weights draw large images: the image term is only bounded by being finite
    assert 0 < float(m[f"loss_{term}"]) < (10 if term == "label" else np.inf)


def test_image_term_on_a_sub_batch_renders_every_kth_sample(generator, samples):
    """``image_batch``: the step's image term is image_space_loss over every (B / image_batch)-th sample of the batch
    (recomputed here from the step's own key, samples and encoder), not over the whole batch."""
    from smis_jax import training
    from smis_jax.config import TrainConfig

    protos, n_classes = _prototypes(generator, samples, "dense")
    c = generator.config
    enc = EncoderConfig(input_nc=n_classes, style_num=c.n_latent, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                        style_dim=c.style_dim, se_reduction=8, input_size=64)
    latent_avg = jnp.broadcast_to(generator.latent_avg, (c.n_latent, c.style_dim))
    cfg = StepConfig(generator=c, encoder=enc, batch_size=2, image_lambda=1.0, image_batch=1)
    state = init_train_state(cfg, 0)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    _, m = make_train_step(cfg, data_mesh(jax.devices()[:1]))(init_train_state(cfg, 0), generator.params, protos,
                                                               latent_avg)
    w_plus, labels, noise = training._pseudo_pairs(cfg, generator.params, protos, key, lambda x: x, with_noise=True)
    onehot = labeling.labels_to_onehot(labels, n_classes)
    latent = training.latent_loss(cfg, state.params, state.batch_stats, onehot, w_plus, latent_avg)[1][2]
    first = image_space_loss_of(cfg, generator.params, latent[:1], w_plus[:1], [n[:1] for n in noise])
    whole = image_space_loss_of(cfg, generator.params, latent, w_plus, noise)
    np.testing.assert_allclose(m["loss_image"], first, rtol=1e-4)
    assert abs(whole - first) > 1e-3 * whole  # the two samples differ: the sub-batch is not the whole batch
    with pytest.raises(ValueError, match="image_batch must be 0 .* divide batch_size 4, got 3"):
        TrainConfig.for_domain("shapes", batch_size=4, image_batch=3)


def image_space_loss_of(cfg, *args):
    from smis_jax.training import image_space_loss
    return float(jax.jit(lambda *a: image_space_loss(cfg, *a))(*args))


def test_label_space_loss_is_the_cross_entropy_of_cosine_scores(generator, samples):
    """label_space_loss against numpy: features of the decoded codes, cosine to the class vectors, softmax at the
    temperature, mean negative log-likelihood of the labels; the sample's own code scores lower than a stranger's."""
    from smis_jax.training import class_vectors, label_space_loss

    protos, n_classes = _prototypes(generator, samples, "dense")
    c = generator.config
    enc = EncoderConfig(input_nc=n_classes, style_num=c.n_latent, style_dim=c.style_dim, input_size=64)
    cfg = StepConfig(generator=c, encoder=enc, batch_size=2, label_temperature=0.2)
    from smis_jax.nets.stylegan2 import make_noise
    w = sample_latents(cfg, generator.params, jax.random.key(3))
    noise = make_noise(c, jax.random.key(4), 2, until_res=64)
    features = np.asarray(generator.synthesize(w, noise=noise, until_res=64)[1], np.float64)
    labels = np.asarray(labeling.pseudo_label(jnp.asarray(features, jnp.float32), protos, out_size=64))
    got = float(jax.jit(lambda *a: label_space_loss(cfg, *a))(generator.params, w, noise, jnp.asarray(labels), protos))
    f = features / (np.linalg.norm(features, axis=-1, keepdims=True) + 1e-8)
    scores = np.einsum("bhwc,lc->bhwl", f, np.asarray(protos.vectors, np.float64)) / 0.2
    scores[..., ~np.asarray(protos.present)] = -np.inf
    logp = scores - np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1, keepdims=True)) - scores.max(-1, keepdims=True)
    want = -np.mean(np.take_along_axis(logp, labels[..., None], -1))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    stranger = sample_latents(cfg, generator.params, jax.random.key(99))
    other = float(jax.jit(lambda *a: label_space_loss(cfg, *a))(generator.params, stranger, noise, jnp.asarray(labels),
                                                                  protos))
    assert other > got
    # sparse prototypes: the class vectors are the normalised means of each class's vectors
    sparse = labeling.SparsePrototypes(vectors=jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
                                       classes=jnp.asarray([1, 2, 2]), n_classes=3)
    dense = class_vectors(sparse)
    np.testing.assert_allclose(dense.vectors, [[0, 0], [1, 0], [0.6 / np.hypot(0.6, 1.8), 1.8 / np.hypot(0.6, 1.8)]],
                               atol=1e-6)
    np.testing.assert_array_equal(dense.present, [False, True, True])


def test_image_space_loss_is_the_pooled_mse(generator):
    """image_space_loss against numpy: both images rendered with the same (full) noise, box-averaged to 64x64, MSE;
    the sample's own code scores 0 and its gradient reaches only the encoder's side."""
    from smis_jax.nets.stylegan2 import make_noise
    from smis_jax.training import image_space_loss

    c = generator.config
    enc = EncoderConfig(input_nc=3, style_num=c.n_latent, style_dim=c.style_dim, input_size=64)
    cfg = StepConfig(generator=c, encoder=enc, batch_size=2, image_lambda=1.0)
    w = sample_latents(cfg, generator.params, jax.random.key(3))
    other = sample_latents(cfg, generator.params, jax.random.key(9))
    noise = make_noise(c, jax.random.key(4), 2)
    loss = jax.jit(lambda *a: image_space_loss(cfg, *a))
    pooled = []
    for codes in (other, w):
        image = np.asarray(generator.synthesize(codes, noise=noise)[0], np.float64)
        f = image.shape[1] // 64
        pooled.append(image.reshape(2, 64, f, 64, f, 3).mean(axis=(2, 4)) if f > 1 else image)
    want = np.mean((pooled[0] - pooled[1]) ** 2)
    np.testing.assert_allclose(float(loss(generator.params, other, w, noise)), want, rtol=1e-4)
    assert float(loss(generator.params, w, w, noise)) < 1e-9 * want  # 0 up to the two forwards' rounding
    g_latent, g_target = jax.grad(lambda a, b: image_space_loss(cfg, generator.params, a, b, noise), argnums=(0, 1))(
        other, w)
    assert float(jnp.abs(g_latent).max()) > 0 and float(jnp.abs(g_target).max()) == 0.0


def test_learning_rate_decay_scales_the_real_steps_updates(generator, samples):
    """``lr_decay_steps``: constant until the last N of ``max_steps``, then a half cosine towards 0. Two runs from the
    same seed, one constant: their first updates are equal, and where the schedule stands halfway down the decayed
    run's update is half the constant run's (Ranger's update is linear in the rate away from Lookahead's syncs)."""
    from smis_jax.config import TrainConfig

    protos, n_classes = _prototypes(generator, samples, "dense")
    c = generator.config
    latent_avg = jnp.broadcast_to(generator.latent_avg, (c.n_latent, c.style_dim))
    const = _step_config(generator, n_classes)
    decayed = StepConfig(**{**const.__dict__, "max_steps": 3, "lr_decay_steps": 2, "learning_rate": 1.0})
    const = StepConfig(**{**const.__dict__, "learning_rate": 1.0})  # early RAdam steps are ~lr * grad
    mesh = data_mesh(jax.devices()[:1])
    runs = {}
    for name, cfg in (("const", const), ("decayed", decayed)):
        step, state, params, lrs = make_train_step(cfg, mesh), init_train_state(cfg, 0), [], []
        for _ in range(3):
            state, m = step(state, generator.params, protos, latent_avg)
            params.append(jax.tree.map(np.asarray, state.params))
            lrs.append(float(m["lr"]) if "lr" in m else None)
        runs[name] = params, lrs
    assert runs["const"][1] == [None] * 3  # a constant rate is not logged
    np.testing.assert_allclose(runs["decayed"][1], [1.0, 1.0, 0.5], rtol=1e-6)  # count 0, 1 (= start), 2
    flat = lambda tree: np.concatenate([x.ravel() for x in jax.tree.leaves(tree)])  # noqa: E731
    (pc, _), (pd, _) = runs["const"], runs["decayed"]
    np.testing.assert_array_equal(flat(pc[1]), flat(pd[1]))  # full rate until the decay starts
    moved_c, moved_d = flat(pc[2]) - flat(pc[1]), flat(pd[2]) - flat(pd[1])
    assert np.abs(moved_c).max() > 1e-4  # the third update moved the weights
    # float32: the weights (~0.05) round each ~1e-5 update to a few 1e-4 of itself; a wrong rate is off by ~0.5
    assert np.linalg.norm(moved_d - 0.5 * moved_c) < 1e-3 * np.linalg.norm(moved_c)
    with pytest.raises(ValueError, match=r"lr_decay_steps must lie in \[0, max_steps = 10\], got 11"):
        TrainConfig.for_domain("shapes", max_steps=10, lr_decay_steps=11)


def test_offset_head_is_trained_by_the_image_term(generator, samples):
    """--offset-res: the encoder's offset reaches the decoded image, so the image-space term trains the head: it
    starts at zero (offset_rms 0 at the first step) and moves once updated; the paper's step reports no offset. The
    W+ loss alone cannot reach the head, so a config without an image or label term is refused, as is a side the
    encoder has no map of."""
    from smis_jax.config import TrainConfig

    protos, n_classes = _prototypes(generator, samples, "dense")
    c = generator.config
    enc = EncoderConfig(input_nc=n_classes, style_num=c.n_latent, widths=(8, 16, 16, 32), units=(1, 1, 1, 1),
                        style_dim=c.style_dim, se_reduction=8, input_size=64, offset_res=8,
                        offset_channels=c.channel(8))
    cfg = StepConfig(generator=c, encoder=enc, batch_size=2, image_lambda=1.0, learning_rate=1e-2)
    latent_avg = jnp.broadcast_to(generator.latent_avg, (c.n_latent, c.style_dim))
    step = make_train_step(cfg, data_mesh(jax.devices()[:1]))
    state = init_train_state(cfg, 0)
    first_state = jax.device_get(state)
    rms = []
    for _ in range(2):
        state, m = step(state, generator.params, protos, latent_avg)
        rms.append(float(m["offset_rms"]))
    # only the image term reaches the head (W+'s MSE does not): its update moved the zero conv off zero
    assert rms[0] == 0.0 and rms[1] > 0.0, rms
    moved = jax.device_get(state.params["offset_head"]["zero_kernel"])
    assert not np.any(first_state.params["offset_head"]["zero_kernel"]) and np.abs(moved).max() > 0
    assert "offset_rms" not in make_train_step(_step_config(generator, n_classes), data_mesh(jax.devices()[:1])
                                               )(init_train_state(_step_config(generator, n_classes), 0),
                                                 generator.params, protos, latent_avg)[1]
    with pytest.raises(ValueError, match="offset_res 8 needs image_lambda or label_lambda > 0"):
        TrainConfig.for_domain("shapes", offset_res=8, image_lambda=0.0)
    with pytest.raises(ValueError, match="offset_res must be 0 .* mask_size 64: 4, 8 or 16; got 32"):
        TrainConfig.for_domain("shapes", offset_res=32)
