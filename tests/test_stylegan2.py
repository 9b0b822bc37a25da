"""StyleGAN2 generator: parity with the rosinality golden vectors, the stopped forward, config and helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FORWARD_TOL, GRAD_TOL, rel_err, count_traces
from smis_jax.io import load_generator
from smis_jax.io.stylegan2 import convert
from smis_jax.nets import stylegan2 as sg

N_NOISE = 11  # golden generator: size 128


def nhwc(a):
    return np.asarray(a).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def io(golden):
    return dict(np.load(golden / "stylegan2_tiny128_io.npz"))


@pytest.fixture(scope="module")
def converted_dir(golden, tmp_path_factory):
    return convert(golden / "stylegan2_tiny128.pt", tmp_path_factory.mktemp("sg2") / "tiny128")


# Both loading routes must give the same generator: the .pt converted in memory, and a converted directory.
@pytest.fixture(scope="module", params=["pt", "converted"])
def gen(request, golden, converted_dir):
    path = golden / "stylegan2_tiny128.pt" if request.param == "pt" else converted_dir
    return load_generator(path)


@pytest.fixture(scope="module")
def noise(io):
    return [jnp.asarray(nhwc(io[f"noise_{i}"])) for i in range(N_NOISE)]


def test_config_from_checkpoint(gen, golden):
    import json

    meta = json.loads((golden / "stylegan2_tiny128.json").read_text())
    c = gen.config
    assert (c.size, c.style_dim, c.n_mlp, c.lr_mlp) == (meta["size"], meta["style_dim"], meta["n_mlp"], meta["lr_mlp"])
    assert dict(c.channels) == {int(r): ch for r, ch in meta["channels"].items()}
    assert (c.n_latent, c.num_layers, c.feature_channels) == (meta["n_latent"], meta["num_layers"], 32)
    assert len(gen.noises) == N_NOISE and gen.noises[-1].shape == (1, 128, 128, 1)


def test_mapping(gen, io):
    assert rel_err(gen.mapping(io["z"]), io["w"]) < FORWARD_TOL


def test_latent_avg(gen, io):
    np.testing.assert_array_equal(gen.latent_avg, io["latent_avg"])


def test_image_and_features_from_z(gen, io, noise):
    w = gen.mapping(io["z"])
    w_plus = jnp.repeat(w[:, None], gen.config.n_latent, axis=1)
    assert rel_err(w_plus, io["latents_z"]) < FORWARD_TOL
    image, features = gen.synthesize(w_plus, noise)
    assert rel_err(image, nhwc(io["img_z"])) < FORWARD_TOL
    assert rel_err(features, nhwc(io["feat_z"])) < FORWARD_TOL


def test_truncation(gen, io, noise):
    w = sg.truncate(gen.mapping(io["z"]), gen.latent_avg, 0.7)
    w_plus = jnp.repeat(w[:, None], gen.config.n_latent, axis=1)
    assert rel_err(w_plus, io["latents_trunc"]) < FORWARD_TOL
    assert rel_err(gen.synthesize(w_plus, noise)[0], nhwc(io["img_trunc"])) < FORWARD_TOL


def test_style_mixing(gen, io, noise):
    w_plus = sg.style_mix(gen.mapping(io["z"]), gen.mapping(io["z2"]), int(io["mix_inject_index"]),
                          gen.config.n_latent)
    assert rel_err(w_plus, io["latents_mix"]) < FORWARD_TOL
    assert rel_err(gen.synthesize(w_plus, noise)[0], nhwc(io["img_mix"])) < FORWARD_TOL


def test_wplus_input(gen, io, noise):
    image, features = gen.synthesize(io["wplus_in"], noise)
    assert rel_err(image, nhwc(io["img_wplus"])) < FORWARD_TOL
    assert rel_err(features, nhwc(io["feat_wplus"])) < FORWARD_TOL


@pytest.mark.parametrize("mode", [None, "const"])
def test_buffer_noise(gen, io, mode):
    image, _ = gen.synthesize(io["wplus_in"], noise=mode)
    assert rel_err(image, nhwc(io["img_wplus_buffernoise"])) < FORWARD_TOL


def test_gradient_wrt_wplus(gen, io, noise):
    probe = jnp.asarray(nhwc(io["grad_probe"]))
    grad = jax.grad(lambda wp: jnp.mean(gen.synthesize(wp, noise)[0] * probe))(jnp.asarray(io["wplus_in"]))
    assert rel_err(grad, io["grad_wplus"]) < GRAD_TOL


# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gen_pt(golden):
    return load_generator(golden / "stylegan2_tiny128.pt")


def test_until_res_features_bit_exact(gen_pt, io, noise):
    full_image, full_features = gen_pt.synthesize(io["wplus_in"], noise)
    image, features = gen_pt.synthesize(io["wplus_in"], noise[:9], until_res=64)  # layers above 64 need no noise
    assert image is None and full_image.shape == (2, 128, 128, 3)
    np.testing.assert_array_equal(np.asarray(features), np.asarray(full_features))
    # (With a key, make_noise draws the same noise for those layers either way: test_make_noise_shapes.)


def test_stopped_forward_skips_layers(gen_pt, io, noise):
    """The stopped graph holds no layer above 64x64 and no ToRGB (counted as conv ops in the jaxpr)."""
    g = sg.Generator(gen_pt.config)

    def n_convs(until_res):
        jaxpr = jax.make_jaxpr(lambda p, w: g.apply(p, w, noise, until_res))(gen_pt.params, io["wplus_in"])
        return str(jaxpr).count("conv_general_dilated")

    # Full: 11 styled convs + 6 ToRGB convs (the FIR blurs and skip upsamples are slice sums, not convs).
    assert n_convs(None) == 11 + 6
    # Until 64: the 9 styled convs up to the 64x64 block, nothing else.
    assert n_convs(64) == 9


def test_random_noise_and_sample(gen_pt, io):
    key = jax.random.key(7)
    a = gen_pt.synthesize(io["wplus_in"], key=key)
    b = gen_pt.synthesize(io["wplus_in"], key=key)
    c = gen_pt.synthesize(io["wplus_in"], key=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.allclose(a[0], c[0])
    # Explicit noise from make_noise(key) is the same draw.
    explicit = gen_pt.synthesize(io["wplus_in"], sg.make_noise(gen_pt.config, key, 2))
    assert rel_err(explicit[0], a[0]) < FORWARD_TOL

    s = gen_pt.sample(key, 3, truncation=0.5, until_res=64)
    assert s.image is None and s.features.shape == (3, 64, 64, 32) and s.w_plus.shape == (3, 12, 64)
    # The sample's codes are mapping outputs truncated towards latent_avg, identical across layers.
    z = jax.random.normal(jax.random.split(key)[0], (3, 64))
    want = sg.truncate(gen_pt.mapping(z), gen_pt.latent_avg, 0.5)
    assert rel_err(s.w_plus[:, -1], want) < FORWARD_TOL
    np.testing.assert_array_equal(np.asarray(s.w_plus[:, 0]), np.asarray(s.w_plus[:, -1]))

    m = gen_pt.mean_latent(jax.random.key(0), n=256)
    assert m.shape == (64,) and np.all(np.isfinite(m))

    with pytest.raises(ValueError, match="either noise or key"):
        gen_pt.synthesize(io["wplus_in"], "const", key=key)
    with pytest.raises(ValueError, match="noise must be"):
        gen_pt.synthesize(io["wplus_in"], "random")


def test_jitted_once(gen_pt, io, noise):
    """Repeated calls reuse one compiled function (the params are arguments, the config is static)."""
    gen_pt.synthesize(io["wplus_in"], noise[:9], until_res=64)
    with count_traces() as traced:
        for _ in range(3):
            gen_pt.synthesize(io["wplus_in"] + 0.1, noise[:9], until_res=64)
    assert traced() == 0


def test_input_checks(gen_pt, io, noise):
    with pytest.raises(ValueError, match=r"w_plus must be \(B, 12, 64\)"):
        gen_pt.synthesize(io["wplus_in"][:, :5], noise)
    with pytest.raises(ValueError, match="at least 11"):
        gen_pt.synthesize(io["wplus_in"], noise[:9])
    with pytest.raises(ValueError, match=r"noise\[3\] must be"):
        gen_pt.synthesize(io["wplus_in"], noise[:3] + [noise[5]] + noise[4:])
    with pytest.raises(ValueError, match="until_res"):
        gen_pt.synthesize(io["wplus_in"], noise, until_res=32)
    with pytest.raises(ValueError, match="z must be"):
        gen_pt.mapping(io["z"][:, :10])


# ---------------------------------------------------------------------------------------------------------------

def test_rosinality_config_table():
    c = sg.GeneratorConfig.rosinality(1024)
    assert dict(c.channels) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert (c.n_latent, c.num_layers, c.feature_channels) == (18, 17, 512)
    c = sg.GeneratorConfig.rosinality(256, channel_multiplier=1)
    assert dict(c.channels) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    assert (c.n_latent, c.num_layers, c.feature_channels) == (14, 13, 256)
    assert sg.GeneratorConfig(256) == sg.GeneratorConfig.rosinality(256)
    assert c.num_noise_layers(64) == 9


def test_config_json_roundtrip_and_hashable():
    c = sg.GeneratorConfig(128, 64, 4, {"4": 64, "8": 64, "16": 48, "32": 48, "64": 32, "128": 16})
    assert sg.GeneratorConfig.from_json(c.to_json()) == c
    import json

    assert sg.GeneratorConfig.from_json(json.dumps({"kind": "stylegan2", **c.to_json()})) == c
    assert hash(c) == hash(sg.GeneratorConfig.from_json(c.to_json()))


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 32}, "size must be a power of two >= 64"),
    ({"size": 100}, "size must be a power of two"),
    ({"size": 128, "channels": {4: 8, 8: 8, 16: 8, 32: 8, 64: 8}}, "exactly the resolutions"),
    ({"size": 64, "channels": {4: 8, 8: 8, 16: 8, 32: 8, 64: 0}}, "at resolution 64"),
    ({"size": 64, "style_dim": 0}, "style_dim"),
    ({"size": 64, "n_mlp": 0}, "n_mlp"),
    ({"size": 64, "lr_mlp": 0.0}, "lr_mlp"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sg.GeneratorConfig(**kwargs)


def test_style_mix_with_traced_index():
    w1, w2 = jnp.zeros((2, 4)), jnp.ones((2, 4))
    mixed = jax.jit(lambda i: sg.style_mix(w1, w2, i, 6))(jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(mixed[:, :, 0]), [[0, 0, 1, 1, 1, 1]] * 2)
    with pytest.raises(ValueError, match="inject_index"):
        sg.style_mix(w1, w2, 7, 6)


def test_make_noise_shapes():
    c = sg.GeneratorConfig.rosinality(256, 1)
    shapes = [n.shape for n in sg.make_noise(c, jax.random.key(0), 2)]
    assert shapes == [(2, r, r, 1) for r in (4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256)]
    # Stopping early draws the same noise for the layers it computes.
    full = sg.make_noise(c, jax.random.key(0), 2)
    for until_res, n in ((64, 9), (128, 11)):
        part = sg.make_noise(c, jax.random.key(0), 2, until_res=until_res)
        assert len(part) == n
        for a, b in zip(part, full):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def tiny64():
    c = sg.GeneratorConfig(64, 16, 2, {4: 8, 8: 8, 16: 8, 32: 8, 64: 4})
    return c, sg.init_params(c, jax.random.key(0))


def test_init_params(tiny64):
    c, params = tiny64
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, sg.param_shapes(c))
    p = params["params"]
    np.testing.assert_array_equal(p["convs_0"]["conv"]["modulation"]["bias"], np.ones(8))
    np.testing.assert_array_equal(p["to_rgbs_0"]["upsample_kernel"] * 16, np.outer([1, 3, 3, 1], [1, 3, 3, 1]))
    assert 50 < float(jnp.std(p["style"]["dense_0"]["kernel"])) < 200  # randn / lr_mul (0.01)
    g = sg.LoadedGenerator(c, params, [n[:1] for n in sg.make_noise(c, jax.random.key(1), 1)])
    image, features = g.synthesize(jnp.zeros((1, c.n_latent, 16)), key=jax.random.key(2))
    assert image.shape == (1, 64, 64, 3) and features.shape == (1, 64, 64, 4)


def test_grouped_generator_matches_default(tiny64):
    c, params = tiny64
    w_plus = jax.random.normal(jax.random.key(3), (2, c.n_latent, 16))
    noise = sg.make_noise(c, jax.random.key(4), 2)

    def run(grouped):
        return jax.jit(lambda p, w, n: sg.Generator(c, grouped=grouped).apply(p, w, n))(params, w_plus, noise)

    for a, b in zip(run(False), run(True)):
        assert rel_err(a, b) < FORWARD_TOL
