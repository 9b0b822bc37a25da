"""rosinality checkpoint conversion: architecture inference at real shapes, strictness, and the CLI's errors."""

import argparse
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from smis_jax.io import load_generator
from smis_jax.io.converted import ConversionError
from smis_jax.io.stylegan2 import convert, read_rosinality
from smis_jax.io.torchfile import TorchFileError
from smis_jax.nets import stylegan2 as sg

torch = pytest.importorskip("torch")


def rosinality_state_dict(size, channel_multiplier, style_dim=512, n_mlp=8, seed=0):
    """A g_ema state dict with rosinality's key names and shapes (CONVERSION.md 1.2), random values.

    Written from the documented table, independently of the converter, in the order rosinality's modules
    register them; the FIR buffers hold their real value.
    """
    rng = np.random.default_rng(seed)
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
          256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    log_size = int(np.log2(size))
    fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64 * 4
    sd = {}

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def modconv(name, i, o, k, up=False):
        sd[f"{name}.weight"] = rand(1, o, i, k, k)
        if up:
            sd[f"{name}.blur.kernel"] = fir.copy()
        sd[f"{name}.modulation.weight"] = rand(i, style_dim)
        sd[f"{name}.modulation.bias"] = 1 + 0.1 * rand(i)

    def styled(name, i, o, up=False):
        modconv(f"{name}.conv", i, o, 3, up)
        sd[f"{name}.noise.weight"] = rand(1)
        sd[f"{name}.activate.bias"] = rand(o)

    def to_rgb(name, i, up=True):
        sd[f"{name}.bias"] = rand(1, 3, 1, 1)
        if up:
            sd[f"{name}.upsample.kernel"] = fir.copy()
        modconv(f"{name}.conv", i, 3, 1)

    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = rand(style_dim, style_dim) * 100  # randn / lr_mul
        sd[f"style.{i}.bias"] = rand(style_dim)
    sd["input.input"] = rand(1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4])
    to_rgb("to_rgb1", ch[4], up=False)
    in_ch = ch[4]
    for k, log_res in enumerate(range(3, log_size + 1)):
        out_ch = ch[2**log_res]
        styled(f"convs.{2 * k}", in_ch, out_ch, up=True)
        styled(f"convs.{2 * k + 1}", out_ch, out_ch)
        in_ch = out_ch
    for k, log_res in enumerate(range(3, log_size + 1)):
        to_rgb(f"to_rgbs.{k}", ch[2**log_res])
    for i in range(2 * log_size - 3):
        r = 2 ** ((i + 5) // 2)
        sd[f"noises.noise_{i}"] = rand(1, 1, r, r)
    return sd


def n_params(sd):
    """Parameter count as rosinality's ``g.parameters()`` gives it (buffers: noises, FIR kernels excluded)."""
    return sum(v.size for k, v in sd.items() if not (k.startswith("noises.") or k.endswith(".kernel")))


def save_pt(path, obj):
    def to_torch(o):
        if isinstance(o, np.ndarray):
            return torch.from_numpy(o)
        if isinstance(o, dict):
            return {k: to_torch(v) for k, v in o.items()}
        return o

    torch.save(to_torch(obj), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Real architectures.

def test_ffhq_config_f_shapes(tmp_path):
    """FFHQ config-f (1024, channel multiplier 2): 171 keys, 30,370,060 parameters; convert, infer, run to 64x64."""
    sd = rosinality_state_dict(1024, 2)
    assert len(sd) == 171 and n_params(sd) == 30_370_060
    latent_avg = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    pt = save_pt(tmp_path / "stylegan2-ffhq-config-f.pt", {"g_ema": sd, "latent_avg": latent_avg})
    out = convert(pt, tmp_path / "ffhq")

    g = load_generator(out)
    assert g.config == sg.GeneratorConfig.rosinality(1024, channel_multiplier=2)
    assert (g.config.n_latent, g.config.num_layers, g.config.feature_channels) == (18, 17, 512)
    np.testing.assert_array_equal(g.latent_avg, latent_avg)
    p = g.params["params"]
    np.testing.assert_array_equal(p["convs_9"]["conv"]["weight"], sd["convs.9.conv.weight"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["convs_9"]["conv"]["modulation"]["kernel"], sd["convs.9.conv.modulation.weight"].T)
    np.testing.assert_array_equal(g.noises[16][0, :, :, 0], sd["noises.noise_16"][0, 0])

    w_plus = jnp.repeat(g.mapping(jnp.ones((1, 512)))[:, None], 18, axis=1)
    image, features = g.synthesize(w_plus, key=jax.random.key(0), until_res=64)
    assert image is None and features.shape == (1, 64, 64, 512)
    assert np.all(np.isfinite(features))


def test_ukiyoe_256_cm1_shapes(tmp_path):
    """ukiyo-e (256, channel multiplier 1): 135 keys, 24,767,458 parameters; a checkpoint without latent_avg."""
    sd = rosinality_state_dict(256, 1, seed=2)
    assert len(sd) == 135 and n_params(sd) == 24_767_458
    g = load_generator(save_pt(tmp_path / "ukiyoe-256.pt", {"g_ema": sd}))
    assert g.config == sg.GeneratorConfig.rosinality(256, channel_multiplier=1)
    assert (g.config.n_latent, g.config.feature_channels, g.latent_avg) == (14, 256, None)
    w_plus = jnp.zeros((1, 14, 512))
    _, features = g.synthesize(w_plus, until_res=64)
    assert features.shape == (1, 64, 64, 256) and np.all(np.isfinite(features))


@pytest.mark.slow
def test_ffhq_config_f_full_forward(tmp_path):
    sd = rosinality_state_dict(1024, 2)
    g = load_generator(save_pt(tmp_path / "ffhq.pt", {"g_ema": sd}))
    w_plus = jnp.repeat(g.mapping(jnp.ones((1, 512)))[:, None], 18, axis=1)
    image, features = g.synthesize(w_plus, key=jax.random.key(0))
    _, stopped = g.synthesize(w_plus, key=jax.random.key(0), until_res=64)
    assert image.shape == (1, 1024, 1024, 3) and np.all(np.isfinite(image))
    np.testing.assert_array_equal(np.asarray(stopped), np.asarray(features))


def test_training_checkpoint_uses_g_ema_only(tmp_path):
    """A train.py checkpoint ({'g','d','g_ema','g_optim','d_optim','args','ada_aug_p'}, no latent_avg)."""
    sd = rosinality_state_dict(64, 1, style_dim=32, n_mlp=2, seed=3)
    decoy = {k: v + 1 for k, v in sd.items()}
    ckpt = {"g": decoy, "d": {"convs.0.0.weight": np.zeros((4, 3, 1, 1), np.float32)}, "g_ema": sd,
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "params": [0, 1]}]},
            "d_optim": {"state": {}, "param_groups": []}, "args": argparse.Namespace(size=64, iter=10),
            "ada_aug_p": 0.0}
    config, params, noises, latent_avg = read_rosinality(save_pt(tmp_path / "000010.pt", ckpt))
    assert latent_avg is None and config.size == 64 and config.style_dim == 32 and config.n_mlp == 2
    np.testing.assert_array_equal(params["params"]["input"], sd["input.input"].transpose(0, 2, 3, 1))


def test_converted_config_json(tmp_path, golden):
    import json

    out = convert(golden / "stylegan2_tiny128.pt", tmp_path / "g")
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "stylegan2" and meta["has_latent_avg"] is True
    assert sg.GeneratorConfig.from_json(meta) == sg.GeneratorConfig(
        128, 64, 4, {4: 64, 8: 64, 16: 48, 32: 48, 64: 32, 128: 16})
    with pytest.raises(FileExistsError, match="not empty"):
        convert(golden / "stylegan2_tiny128.pt", out)


# ---------------------------------------------------------------------------------------------------------------
# Error paths: each through the API (exception type and message) and through the CLI (exit 2, one line).

def _small():
    return rosinality_state_dict(64, 1, style_dim=16, n_mlp=2, seed=4)


def _bad_files(tmp_path, golden):
    """{case: (path, exception type, regex the one-line message must match)}."""
    cases = {}
    raw = (golden / "stylegan2_tiny128.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "truncated.pt", TorchFileError, r"truncated\.pt: .*(truncated|corrupt)")

    (tmp_path / "notes.txt").write_text("this is not a checkpoint\n")
    cases["not_a_checkpoint"] = (tmp_path / "notes.txt", TorchFileError, r"notes\.txt: not a .*checkpoint")

    sd = _small()
    sd["convs.3.conv.weight"] = np.zeros((1, 512, 512, 3, 1), np.float32)
    cases["wrong_shape"] = (save_pt(tmp_path / "wrong_shape.pt", {"g_ema": sd}), ConversionError,
                            r"key 'convs\.3\.conv\.weight' has shape \(1, 512, 512, 3, 1\), expected \(1, 512, 512, 3, 3\)")

    sd = _small()
    del sd["convs.5.noise.weight"]
    cases["missing_key"] = (save_pt(tmp_path / "missing.pt", {"g_ema": sd}), ConversionError,
                            r"missing key 'convs\.5\.noise\.weight' \(expected shape \(1,\)\)")

    sd = _small()
    sd["convs.5.extra.weight"] = np.zeros((2, 2), np.float32)
    cases["extra_key"] = (save_pt(tmp_path / "extra.pt", {"g_ema": sd}), ConversionError,
                          r"unexpected key 'convs\.5\.extra\.weight' with shape \(2, 2\)")

    cases["g_without_g_ema"] = (save_pt(tmp_path / "g_only.pt", {"g": _small()}), ConversionError,
                                r"has 'g' but no 'g_ema'.*'g_ema' is required")

    cases["bare_state_dict"] = (save_pt(tmp_path / "bare.pt", _small()), ConversionError, r"bare generator state dict")

    sd = _small()
    cases["bad_latent_avg"] = (save_pt(tmp_path / "latent.pt", {"g_ema": sd, "latent_avg": np.zeros((2, 16), np.float32)}),
                               ConversionError, r"'latent_avg' has shape \(2, 16\), expected \(16,\)")
    return cases


CASES = ["truncated", "not_a_checkpoint", "wrong_shape", "missing_key", "extra_key", "g_without_g_ema",
         "bare_state_dict", "bad_latent_avg"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, golden):
    return _bad_files(tmp_path_factory.mktemp("bad"), golden)


@pytest.mark.parametrize("case", CASES)
def test_errors_through_api(bad_files, tmp_path, case):
    path, exc, pattern = bad_files[case]
    with pytest.raises(exc, match=pattern) as info:
        convert(path, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written on failure
    with pytest.raises(exc, match=pattern):
        load_generator(path)


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "convert", "stylegan2", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CLI_CASES = ["truncated", "not_a_checkpoint", "wrong_shape", "missing_key", "extra_key", "g_without_g_ema"]


def test_errors_through_cli(bad_files, tmp_path):
    # All at once: each process mostly pays for importing jax.
    procs = {case: _cli(bad_files[case][0], tmp_path / case) for case in CLI_CASES}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        _, _, pattern = bad_files[case]
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        assert "Traceback" not in err
        assert re.search(pattern, lines[0]), (case, lines[0])
        assert not (tmp_path / case).exists()


def test_cli_help_and_success(golden, tmp_path):
    help_proc = _cli("--help")
    ok_proc = _cli(golden / "stylegan2_tiny128.pt", tmp_path / "ok")
    out, err = help_proc.communicate(timeout=120)
    assert help_proc.returncode == 0 and "g_ema" in out and "rosinality" in out
    out, err = ok_proc.communicate(timeout=120)
    assert ok_proc.returncode == 0, err
    assert (tmp_path / "ok" / "config.json").is_file() and "wrote" in out


# ---------------------------------------------------------------------------------------------------------------
# Optional: rosinality's own code (vendored by draggan) as an oracle at the ukiyo-e shapes.

@pytest.mark.slow
def test_parity_with_rosinality_code_256_cm1(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    model = pytest.importorskip("draggan.deprecated.stylegan2.model")
    from conftest import FORWARD_TOL, rel_err

    torch.manual_seed(0)
    ref = model.Generator(256, 512, 8, channel_multiplier=1).eval()
    with torch.no_grad():  # randomise everything (untrained noise strengths and biases are zero)
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) * (100 if name.startswith("style.") and name.endswith("weight") else 1))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    g = load_generator(save_pt(tmp_path / "ref.pt", {"g_ema": sd}))

    feats = {}
    ref.convs[7].register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    w_plus = torch.randn(2, 14, 512)
    with torch.no_grad():
        image, _ = ref([w_plus], input_is_latent=True, randomize_noise=False)
    ours, features = g.synthesize(jnp.asarray(w_plus.numpy()), noise="const")
    assert rel_err(ours, image.numpy().transpose(0, 2, 3, 1)) < FORWARD_TOL
    assert rel_err(features, feats["f"].numpy().transpose(0, 2, 3, 1)) < FORWARD_TOL
