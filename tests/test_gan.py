"""The StyleGAN2 trainer: conv kernel gradients, the discriminator against rosinality's, the trainer's run,
exact resume, export to what ``stylegan2.load`` reads and to a rosinality ``.pt``."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import FORWARD_TOL, rel_err
from test_figures import assert_drawn, assert_events_equal_metrics
from smis_jax import gan
from smis_jax.gan import trainer
from smis_jax.io import load_generator
from smis_jax.io.converted import StateDict
from smis_jax.io.stylegan2 import (
    discriminator_from_state_dict,
    read_rosinality,
    state_dict_from_params,
    write_rosinality,
)
from smis_jax.nets import ops, stylegan2

TINY = dict(channels={4: 32, 8: 32, 16: 16, 32: 16, 64: 8}, d_channels={4: 32, 8: 32, 16: 16, 32: 16, 64: 8},
            style_dim=32, n_mlp=2, batch_size=4, r1_every=4)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", [
    ((2, 9, 9, 5), (3, 3, 5, 7), 1, ((1, 1), (1, 1)), 1),  # 'same'
    ((2, 10, 10, 5), (3, 3, 5, 7), 2, ((0, 0), (0, 0)), 1),  # blurred stride-2 conv (discriminator)
    ((2, 8, 8, 5), (1, 1, 5, 7), 2, ((0, 0), (0, 0)), 1),  # skip 1x1 stride 2
    ((2, 6, 6, 5), (3, 3, 5, 7), 1, ((2, 2), (2, 2)), 2),  # transposed conv (generator upsampling)
])
def test_matmul_kernel_gradient_equals_xla(x_shape, w_shape, stride, padding, dilation):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)

    def loss(x, w, matmul):
        return jnp.sum(jnp.sin(ops.conv(x, w, stride, padding, dilation, matmul_weight_grad=matmul)))

    ours, xla = jax.grad(loss, (0, 1))(x, w, True), jax.grad(loss, (0, 1))(x, w, False)
    assert float(loss(x, w, True)) == float(loss(x, w, False))  # the forward pass is XLA's own either way
    for a, b in zip(ours, xla):
        assert rel_err(a, b) < 1e-5  # same sums, another order


def test_minibatch_stddev_against_a_loop():
    x = np.asarray(jax.random.normal(jax.random.key(0), (8, 3, 3, 5)))
    out = np.asarray(gan.minibatch_stddev(jnp.asarray(x)))
    assert out.shape == (8, 3, 3, 6) and np.array_equal(out[..., :5], x)
    for b in range(8):  # rosinality: view(group, -1, ...) -> sample b is in group member b % (B / G)
        members = x[[b % 2 + 2 * g for g in range(4)]]
        assert np.allclose(out[b, ..., 5], np.sqrt(members.var(0) + 1e-8).mean(), atol=1e-6)


@pytest.fixture
def rosinality(monkeypatch, tmp_path):
    """(torch, rosinality's model module as draggan vendors it), on the CPU; skipped where draggan is absent."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pytest.importorskip("draggan.deprecated.stylegan2.model")
    return torch, model


@pytest.mark.parametrize("size", [16, pytest.param(64, marks=pytest.mark.slow)])
def test_discriminator_matches_rosinality(rosinality, size):
    """rosinality's PyTorch Discriminator (vendored by draggan) with random weights: logits and the input
    gradient R1 penalises, after our conversion table. 16 px has every kind of block (FromRGB, a residual block
    per halving, minibatch stddev, the final conv and linears); 64 px, the trainer's size, is the slow variant."""
    torch, model = rosinality
    torch.manual_seed(0)
    ref = model.Discriminator(size, channel_multiplier=1).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.endswith("bias") else 1))
    sd = StateDict({k: v.numpy() for k, v in ref.state_dict().items()}, "rosinality D")  # float32 weights
    channels, params = discriminator_from_state_dict(sd)
    sd.finish()
    images = torch.randn(4, 3, size, size)
    with torch.no_grad():
        logits = ref(images)
    x = jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
    disc = gan.Discriminator(channels)
    # Jitted, as the trainer runs it (op by op, every small kernel would compile on its own: 40 s instead of 4).
    assert rel_err(jax.jit(disc.apply)(params, x), logits.numpy()[:, 0]) < FORWARD_TOL
    # The input gradient (what R1 penalises) in float64 on both sides: at these random 512-channel weights it is
    # ill-conditioned in float32 (rosinality's own float32 gradient is 2e-2 from its float64 one, and so is ours),
    # so float64 is where the maths can be compared tightly.
    ref64, x64 = ref.double(), images.double().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(ref64(x64).sum(), x64)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        grad = jax.jit(jax.grad(lambda x, p: jnp.sum(disc.apply(p, x))))(jnp.asarray(x, jnp.float64), params64)
        assert grad.dtype == jnp.float64
        assert rel_err(grad, grad_ref.numpy().transpose(0, 2, 3, 1)) < 1e-9


def _final_state(workdir):
    _, state, meta = trainer.restore_latest(workdir)
    return jax.device_get(state), meta


@pytest.mark.e2e
def test_trainer_learns_resumes_exactly_and_exports(tmp_path):
    cfg = gan.GanConfig(**TINY)
    kw = dict(log_every=2, image_every=4, save_every=4, eval_every=8)
    full = trainer.train(cfg, tmp_path / "full", max_kimg=0.032, **kw)  # 8 steps of 4
    assert full["step"] == 8
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[-1]["loss_d"] < rows[0]["loss_d"]  # the discriminator learns to tell scenes from samples
    assert "quality/oracle_confidence" in rows[-1] and (tmp_path / "full" / "images" / "step_0000008.png").is_file()

    trainer.train(cfg, tmp_path / "split", max_kimg=0.016, **kw)  # 4 steps, then a resume to 8
    with pytest.raises(ValueError, match="--resume"):
        trainer.train(cfg, tmp_path / "split", max_kimg=0.032, **kw)
    with pytest.raises(ValueError, match="r1_gamma"):
        trainer.train(cfg.replace(r1_gamma=1.0), tmp_path / "split", max_kimg=0.032, resume=True, **kw)
    trainer.train(cfg, tmp_path / "split", max_kimg=0.032, resume=True, **kw)
    (a, meta_a), (b, meta_b) = _final_state(tmp_path / "full"), _final_state(tmp_path / "split")
    assert meta_a["step"] == meta_b["step"] == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))  # bit for bit
    record = json.loads((tmp_path / "split" / "config.json").read_text())
    assert len(record["invocations"]) == 2  # the refused resumes wrote nothing
    # TensorBoard: the split run's events are its metrics.jsonl, each step once; sample grids; curves.png drawn
    events = assert_events_equal_metrics(tmp_path / "split")
    assert sorted({e.step for e in events if e.tag == "loss_d"}) == [2, 4, 6, 8]
    assert [e.step for e in events if e.kind == "image"] == [4, 8]
    assert [e.step for e in events if e.kind == "text"] == [0, 4]  # the record of each start
    assert_drawn(np.asarray(Image.open(tmp_path / "split" / "curves.png")), (720, 1040))

    out = trainer.export_generator(tmp_path / "full", tmp_path / "export")
    g = load_generator(out)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["params_sha256"] == trainer.params_sha256(g.params) == trainer.params_sha256(a.g_ema)
    assert prov["kimg"] == 0.032 and prov["step"] == 8 and g.latent_avg is not None

    # rosinality .pt: our reader gets back exactly what we wrote
    pt = write_rosinality(tmp_path / "g.pt", g.config, g.params, g.noises, g.latent_avg)
    config, params, noises, latent_avg = read_rosinality(pt)
    assert config == g.config and np.array_equal(latent_avg, np.asarray(g.latent_avg))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(g.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert set(state_dict_from_params(g.config, g.params, g.noises)) == set(
        torch_keys := __import__("torch").load(pt)["g_ema"].keys()) and len(torch_keys) > 0


def test_the_discriminator_learning_rate_is_lr_times_d_lr_mult():
    """Two time scales: D's Adam steps scale with d_lr_mult (lazy-R1's correction kept); G's do not."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.25, -1.0])}

    def first_step(tx):
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    base, fast = gan.GanConfig(**TINY), gan.GanConfig(**TINY, d_lr_mult=4.0)
    c = base.r1_every / (base.r1_every + 1)
    np.testing.assert_allclose(first_step(gan.d_optimizer(base)), -base.lr * c * np.sign(grads["w"]), rtol=1e-5)
    np.testing.assert_allclose(first_step(gan.d_optimizer(fast)), 4 * first_step(gan.d_optimizer(base)), rtol=1e-6)
    with pytest.raises(ValueError, match="d_lr_mult must be > 0"):
        gan.GanConfig(**TINY, d_lr_mult=0.0)
    assert gan.GanConfig.from_json({k: v for k, v in base.to_json().items() if k != "d_lr_mult"}) == base


@pytest.mark.slow
def test_retune_changes_optimisation_settings_from_a_step_on(tmp_path):
    """--retune: optimisation settings may change from a step on (recorded); the networks may not. Slow: every
    changed setting is a constant of the compiled step, so it compiles again."""
    cfg = gan.GanConfig(**TINY)
    kw = dict(log_every=2, image_every=4, save_every=4, eval_every=8)
    trainer.train(cfg, tmp_path / "run", max_kimg=0.016, **kw)
    with pytest.raises(ValueError, match="not batch_size"):
        trainer.train(cfg.replace(batch_size=8), tmp_path / "run", max_kimg=0.024, resume=True, retune=True, **kw)
    trainer.train(cfg.replace(r1_gamma=1.0), tmp_path / "run", max_kimg=0.024, resume=True, retune=True, **kw)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["retuned"] == [{"step": 4, "changes": {"r1_gamma": [cfg.r1_gamma, 1.0]}}]
    assert record["gan"]["r1_gamma"] == 1.0 and _final_state(tmp_path / "run")[1]["step"] == 6


def test_rosinality_code_loads_the_exported_pt(rosinality, tmp_path):
    """The PyTorch original can use what we export: rosinality's Generator loads it strictly and draws our image."""
    torch, model = rosinality
    config = stylegan2.GeneratorConfig.rosinality(64, channel_multiplier=1, style_dim=64, n_mlp=2)
    params = stylegan2.init_params(config, jax.random.key(3))
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32), params)  # no zeros
    noises = stylegan2.make_noise(config, jax.random.key(5), 1)
    pt = write_rosinality(tmp_path / "g.pt", config, params, noises)
    ref = model.Generator(64, 64, 2, channel_multiplier=1).eval()
    ref.load_state_dict(torch.load(pt)["g_ema"], strict=True)
    w_plus = np.asarray(jax.random.normal(jax.random.key(6), (2, config.n_latent, 64)), np.float32)
    with torch.no_grad():
        image, _ = ref([torch.from_numpy(w_plus)], input_is_latent=True, randomize_noise=False)
    ours, _ = stylegan2.LoadedGenerator(config, params, noises).synthesize(jnp.asarray(w_plus), noise="const")
    assert rel_err(ours, image.numpy().transpose(0, 2, 3, 1)) < FORWARD_TOL


@pytest.mark.e2e
def test_a_run_starts_from_a_trained_generator_with_a_discriminator_warmup(tmp_path):
    """--init-generator: G and its EMA start from an exported generator (the step count continues from its kimg),
    D is fresh and trains alone for --d-warmup-kimg; then G trains. A resume keeps the warm-up's end; a mismatched
    config is refused naming the folder."""
    cfg = gan.GanConfig(**TINY)
    kw = dict(log_every=2, image_every=100, save_every=2, eval_every=100)
    trainer.train(cfg, tmp_path / "first", max_kimg=0.008, **kw)  # 2 steps of 4
    shipped = trainer.export_generator(tmp_path / "first", tmp_path / "g")
    g0 = load_generator(shipped).params

    with pytest.raises(ValueError, match=r"g: its generator .* is not the run's"):
        trainer.train(cfg.replace(style_dim=16), tmp_path / "bad", max_kimg=0.024, init_generator=shipped, **kw)
    # warm-up of 2 steps (0.008 kimg), from step 2 (0.008 kimg) to step 4: G untouched, D trained
    trainer.train(cfg, tmp_path / "more", max_kimg=0.016, init_generator=shipped, d_warmup_kimg=0.008, **kw)
    record = json.loads((tmp_path / "more" / "config.json").read_text())
    init = record["init_generator"]
    assert (init["start_step"], init["g_from_step"], init["kimg"]) == (2, 4, 0.008)
    assert init["params_sha256"] == trainer.params_sha256(g0)
    first_prov = json.loads((shipped / "provenance.json").read_text())
    assert init["provenance"] == first_prov and first_prov["params_sha256"] == init["params_sha256"]
    _, warm, meta = trainer.restore_latest(tmp_path / "more")
    assert meta["step"] == 4
    for a, b, c in zip(jax.tree.leaves(warm.g_params), jax.tree.leaves(warm.g_ema), jax.tree.leaves(g0)):
        assert np.array_equal(np.asarray(a), np.asarray(c)) and np.array_equal(np.asarray(b), np.asarray(c))
    rows = [json.loads(line) for line in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and "loss_g" not in rows[0]  # warm-up steps report no G loss
    d_first = trainer.restore_latest(tmp_path / "first")[1].d_params
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(warm.d_params), jax.tree.leaves(d_first)))

    with pytest.raises(ValueError, match="--init-generator only starts a new run"):
        trainer.train(cfg, tmp_path / "more", max_kimg=0.024, resume=True, init_generator=shipped, **kw)
    trainer.train(cfg, tmp_path / "more", max_kimg=0.024, resume=True, **kw)  # past the warm-up: G trains
    _, state, meta = trainer.restore_latest(tmp_path / "more")
    assert meta["step"] == 6
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(state.g_params), jax.tree.leaves(g0)))
    rows = [json.loads(line) for line in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and math.isfinite(rows[-1]["loss_g"])
    prov = json.loads((trainer.export_generator(tmp_path / "more", tmp_path / "g2") / "provenance.json").read_text())
    assert prov["init_generator"] == init and prov["step"] == 6  # the chain: the starting generator's provenance
    # a run recorded before the record kept that provenance: the export reads it from the folder if the weights match
    record = json.loads((tmp_path / "more" / "config.json").read_text())
    record["init_generator"] = {k: v for k, v in init.items() if k != "provenance"}
    (tmp_path / "more" / "config.json").write_text(json.dumps(record))
    prov = json.loads((trainer.export_generator(tmp_path / "more", tmp_path / "g3") / "provenance.json").read_text())
    assert prov["init_generator"] == init
    (shipped / "provenance.json").write_text(json.dumps({**first_prov, "params_sha256": "another"}))
    prov = json.loads((trainer.export_generator(tmp_path / "more", tmp_path / "g4") / "provenance.json").read_text())
    assert "provenance" not in prov["init_generator"]  # replaced weights: nothing claimed


def test_kernel_distance_is_kids_unbiased_mmd():
    """``metrics.kernel_distance`` against the estimator written out pair by pair (Binkowski et al. 2018, eq. 4 with
    the cubic kernel): the off-diagonal means within each set minus twice the mean across."""
    from smis_jax.metrics import kernel_distance

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(9, 5))

    def k(a, b):
        return (float(np.dot(a, b)) / 5 + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    within_y = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    across = sum(k(a, b) for a in x for b in y) / (7 * 9)
    assert kernel_distance(x, y) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)
    assert kernel_distance(x, y) == pytest.approx(kernel_distance(y, x), rel=1e-12)
    with pytest.raises(ValueError, match=r"\(7, 5\) and \(9, 4\)"):
        kernel_distance(x, y[:, :4])


def test_kernel_distance_in_alexnet_features_sees_red_lakes():
    """In the fixed feature space (LPIPS's ImageNet AlexNet, 224 px, the taps' spatial means) two disjoint sets of
    real scenes lie close; the same scenes with every lake drawn in the house's red lie far from the real ones."""
    from smis_jax.builtin import shapes
    from smis_jax.io import load_lpips
    from smis_jax.metrics import kernel_distance
    from smis_jax.nets.lpips import alexnet_features

    params = load_lpips().params
    a, b = (shapes.render_batch(shapes.TEST_SEED, start, 128) for start in (0, 128))
    red = np.where((a.mask == shapes.WATER)[..., None], shapes.BASE_COLORS[shapes.HOUSE] / 127.5 - 1, a.image)
    fa, fb, fred = (np.asarray(alexnet_features(params, x)) for x in (a.image, b.image, red.astype(np.float32)))
    assert fa.shape == (128, 1152) and np.all(np.isfinite(fa))
    same, shifted = kernel_distance(fa, fb), kernel_distance(fred, fb)
    assert shifted > 0 and abs(same) < 0.1 * shifted  # measured -0.001 and 0.050, (same, shifted)


def test_quality_cli_reports_the_kernel_distance_and_its_floor(capsys):
    """``python -m train.stylegan2 quality`` on the shipped generator: the oracle's measures and the kernel distance
    to real scenes beside the same distance between two sets of real scenes (its floor at that n)."""
    from smis_jax import builtin
    from train import stylegan2 as cli

    assert cli.main(["quality", "--generator", str(builtin.generator_path()), "-n", "24"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["n"] == 24 and 0.9 < q["oracle_confidence"] <= 1
    assert isinstance(q["kernel_distance"], float) and isinstance(q["data_kernel_distance"], float)
    assert q["kernel_distance"] > q["data_kernel_distance"]
