"""NVIDIA's StyleGAN2 pickles (stylegan2-ada-pytorch snapshots, TensorFlow (G, D, Gs)): parity with goldens made by
NVIDIA's own code (tests/golden_nvidia/make_goldens.py), no pickled code run, and the refusals."""

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import nvidia_pickles as nvp
import pytest

from conftest import FORWARD_TOL, REPO, rel_err
from smis_jax.config import ConfigError, TrainConfig, get_domain
from smis_jax.experiment import domain_generator
from smis_jax.io import load_generator, load_pipeline, nvidiafile
from smis_jax.io.converted import ConversionError
from smis_jax.io.nvidiafile import NvidiaPickleError
from smis_jax.nets import stylegan2 as sg

GOLDEN = REPO / "tests" / "golden_nvidia"
CASES = ["ada_tiny64", "tf_tiny64"]
PSI = 0.7  # the goldens' truncation_psi (in <case>.json)


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "convert", "stylegan2", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli_converted(tmp_path_factory):
    """Both golden pickles converted by the real CLI (run at once: each process mostly imports jax)."""
    out = tmp_path_factory.mktemp("nvidia")
    procs = {case: _cli(GOLDEN / f"{case}.pkl", out / case) for case in CASES}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert "wrote" in stdout
    return out


# Two routes, one generator: the .pkl converted in memory by load(), and the CLI's output directory.
@pytest.fixture(scope="module", params=[(c, r) for c in CASES for r in ("pkl", "converted")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def loaded(request, cli_converted):
    case, route = request.param
    path = GOLDEN / f"{case}.pkl" if route == "pkl" else cli_converted / case
    return case, load_generator(path), dict(np.load(GOLDEN / f"{case}.npz"))


def test_config_inferred(loaded):
    case, g, io = loaded
    meta = json.loads((GOLDEN / f"{case}.json").read_text())
    c = g.config
    assert (c.size, c.lr_mlp, c.n_latent) == (64, 0.01, io["w_plus"].shape[1])
    assert c.style_dim == io["z"].shape[1]
    if case == "ada_tiny64":
        kw = meta["generator_kwargs"]
        assert c.n_mlp == kw["mapping_kwargs"]["num_layers"]
        assert c.conv_clamp == kw["synthesis_kwargs"]["conv_clamp"]
    else:
        assert c.n_mlp == meta["static_kwargs"]["mapping_layers"] and c.conv_clamp is None
    assert dict(c.channels) == {4: 32, 8: 32, 16: 32, 32: 16, 64: 8}


def test_mapping_and_truncation(loaded):
    _, g, io = loaded
    w = g.mapping(jnp.asarray(io["z"]))
    assert rel_err(w, io["w"]) < FORWARD_TOL
    # w_avg / dlatent_avg is the truncation centre (ADA: w_avg.lerp(w, psi)).
    assert rel_err(sg.truncate(w, g.truncation_latent(), PSI), io["w_trunc"]) < FORWARD_TOL


@pytest.mark.parametrize("mode", ["const", "none", "wplus_const"])
def test_images_and_features(loaded, mode):
    _, g, io = loaded
    if mode == "wplus_const":
        w_plus = jnp.asarray(io["w_plus"])
    else:
        w_plus = jnp.repeat(jnp.asarray(io["w"])[:, None], g.config.n_latent, axis=1)
    noise = [jnp.zeros_like(n) for n in g.noises] if mode == "none" else "const"
    image, features = g.synthesize(w_plus, noise=noise)
    assert rel_err(image, io[f"img_{mode}"]) < FORWARD_TOL
    if mode == "const":
        assert rel_err(features, io["features_const"]) < FORWARD_TOL
        _, early = g.synthesize(w_plus, noise=noise, until_res=64)
        np.testing.assert_array_equal(early, features)


def test_conv_clamp_really_clips():
    g = load_generator(GOLDEN / "ada_tiny64.pkl")
    io = np.load(GOLDEN / "ada_tiny64.npz")
    free = sg.LoadedGenerator(dataclasses.replace(g.config, conv_clamp=None), g.params, g.noises, g.latent_avg)
    w_plus = jnp.repeat(jnp.asarray(io["w"])[:, None], g.config.n_latent, axis=1)
    image, features = free.synthesize(w_plus, noise="const")
    assert np.abs(np.asarray(image) - io["img_const"]).max() > 1.0
    assert np.abs(np.asarray(features)).max() > g.config.conv_clamp


def test_conv_clamp_config_json():
    c = sg.GeneratorConfig(64, 32, 2, {4: 8, 8: 8, 16: 8, 32: 8, 64: 8}, conv_clamp=256)
    assert c.to_json()["conv_clamp"] == 256.0 and sg.GeneratorConfig.from_json(c.to_json()) == c
    assert "conv_clamp" not in dataclasses.replace(c, conv_clamp=None).to_json()  # rosinality configs unchanged
    with pytest.raises(ValueError, match="conv_clamp must be None or a positive number, got -1"):
        dataclasses.replace(c, conv_clamp=-1)


# ---------------------------------------------------------------------------------------------------------------
# No pickled code runs.

def test_embedded_source_is_not_run(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "ran"
    src = nvp.SIDE_EFFECT_SRC.format(marker=str(marker))
    path = nvp.rewrite(GOLDEN / "ada_tiny64.pkl", tmp_path / "side_effect.pkl", module_src=src)
    g = load_generator(path)
    assert not marker.exists()
    assert g.config.conv_clamp == 0.8
    # NVIDIA's own loader would exec() this source: it is really in the file.
    assert str(marker).encode() in path.read_bytes()
    # The TF golden's build_module_src raises SystemExit if run; loading it returned (the test got here).
    assert b"ran pickled code" in (GOLDEN / "tf_tiny64.pkl").read_bytes()


EVIL_GLOBALS = [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                ("torch_utils.persistence", "_src_to_module"), ("torch", "load"), ("numpy", "load"),
                ("dnnlib.util", "open_url")]


@pytest.mark.parametrize("module,name", EVIL_GLOBALS)
def test_other_globals_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}"
    # {'G_ema': module.name('touch ...')}: the call would happen while loading.
    data = (b"\x80\x04}\x8c\x05G_ema" + f"c{module}\n{name}\n".encode() + b"\x8c" + bytes([len(payload)])
            + payload.encode() + b"\x85Rs.")
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(NvidiaPickleError) as info:
        load_generator(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert f"refusing to unpickle {module}.{name}" in msg
    assert not marker.exists()


def test_os_system_refused_through_cli(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(__import__("pickle").dumps({"G_ema": Evil()}))
    proc = _cli(path, tmp_path / "out")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"^error: .*evil\.pkl: refusing to unpickle (posix|os)\.system", err)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_reader_keeps_only_data():
    data = nvidiafile.load(GOLDEN / "ada_tiny64.pkl")
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["G_ema"].class_name == "Generator" and isinstance(data["training_set_kwargs"], dict)
    sd = data["G_ema"].state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values()) and "mapping.w_avg" in sd
    # G holds other weights than G_ema: the parity above proves G_ema was read.
    assert not np.array_equal(sd["mapping.fc0.weight"], data["G"].state_dict()["mapping.fc0.weight"])


# ---------------------------------------------------------------------------------------------------------------
# Refusals: one line naming what is unsupported.

def _ada_change(fn):
    return lambda data: fn(data["G_ema"])


def _set(path, **attrs):
    return _ada_change(lambda g: nvp.module(g, path).state.update(attrs))


def _stylegan3(g):
    mods = nvp.module(g, "synthesis").state["_modules"]
    mods["input"] = mods.pop("b4")


def _embed(g):
    nvp.module(g, "mapping").state["_modules"]["embed"] = nvp.module(g, "mapping.fc0")


def _tf_kwargs(**kw):
    return lambda data: data[2].state["static_kwargs"].update(kw)


def _tf_lod(data):
    synth = data[2].components["synthesis"]
    synth.state["variables"] = [(n.replace("64x64/ToRGB", "ToRGB_lod0"), v) for n, v in synth.state["variables"]]


REFUSALS = {
    "ada_conditional": ("ada", _set("", c_dim=10), r"conditional generator \(c_dim=10\)"),
    "ada_embed": ("ada", _ada_change(_embed), r"conditional generator \(mapping\.embed\)"),
    "ada_resnet": ("ada", _set("synthesis.b16", architecture="resnet"),
                   r"'synthesis\.b16' has architecture 'resnet'; only 'skip'"),
    "ada_orig": ("ada", _set("synthesis.b64", architecture="orig"), r"architecture 'orig'; only 'skip'"),
    "ada_stylegan3": ("ada", _ada_change(_stylegan3),
                      r"synthesis layer 'input' \(a StyleGAN3 \(alias-free\) generator\)"),
    "ada_mixed_clamp": ("ada", _set("synthesis.b8.torgb", conv_clamp=256),
                        r"layers differ in conv_clamp"),
    "ada_no_g_ema": ("ada", lambda data: data.pop("G_ema"), r"no 'G_ema' entry \(top-level keys: "),
    "tf_conditional": ("tf", _tf_kwargs(label_size=10), r"conditional generator \(label_size=10\)"),
    "tf_orig_kwarg": ("tf", _tf_kwargs(architecture="orig"), r"architecture 'orig'; only 'skip' .*config-a\.\.d"),
    "tf_lod_variables": ("tf", _tf_lod, r"variable 'synthesis/ToRGB_lod0/.*progressive 'orig' architecture, or "
                                        r"StyleGAN1\); only 'skip'"),
    "tf_unknown_kwarg": ("tf", _tf_kwargs(fmap_decay=1.0), r"unknown TensorFlow kwarg 'fmap_decay' = 1\.0"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(tmp_path, case):
    pytest.importorskip("torch")
    fmt, change, pattern = REFUSALS[case]
    src = GOLDEN / ("ada_tiny64.pkl" if fmt == "ada" else "tf_tiny64.pkl")
    path = nvp.rewrite(src, tmp_path / f"{case}.pkl", change, protocol=4 if fmt == "ada" else 3)
    with pytest.raises(ConversionError, match=pattern) as info:
        load_generator(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_rewrite_roundtrip_loads(tmp_path):
    """The writer used above re-emits a loadable pickle when nothing is changed (so each refusal is its change's)."""
    pytest.importorskip("torch")
    for case, protocol in [("ada_tiny64", 4), ("tf_tiny64", 3)]:
        g = load_generator(nvp.rewrite(GOLDEN / f"{case}.pkl", tmp_path / f"{case}.pkl", protocol=protocol))
        ref = load_generator(GOLDEN / f"{case}.pkl")
        assert g.config == ref.config
        np.testing.assert_array_equal(g.latent_avg, ref.latent_avg)
        np.testing.assert_array_equal(g.params["params"]["convs_3"]["conv"]["weight"],
                                      ref.params["params"]["convs_3"]["conv"]["weight"])


def test_layer_without_noise(tmp_path):
    """ADA's use_noise=False: the layer has no noise_const/noise_strength; it gets strength 0 and zero buffers."""
    pytest.importorskip("torch")

    def drop_noise(data):
        layer = nvp.module(data["G_ema"], "synthesis.b16.conv1")
        layer.state["use_noise"] = False
        del layer.state["_parameters"]["noise_strength"], layer.state["_buffers"]["noise_const"]

    g = load_generator(nvp.rewrite(GOLDEN / "ada_tiny64.pkl", tmp_path / "no_noise.pkl", drop_noise))
    assert g.params["params"]["convs_3"]["noise_weight"].tolist() == [0.0]  # b16.conv1: block k=1, convs_{2k+1}
    assert not np.asarray(g.noises[4]).any() and np.asarray(g.noises[3]).any()  # noise 2k+2


# ---------------------------------------------------------------------------------------------------------------
# The training entry points: a preset's generator size is a default, checked and overridable.

def test_domain_size_is_checked_and_overridable():
    path = GOLDEN / "ada_tiny64.pkl"
    with pytest.raises(ConfigError, match=r"expects a 128px generator .* is 64px; pass --generator-size 64"):
        domain_generator(path, get_domain("golden-faces"))
    g = domain_generator(path, get_domain("golden-faces"), 64)
    assert g.config.size == 64 and g.config.feature_channels == 8
    with pytest.raises(ConfigError, match="--generator-size 128 given, but .* is a 64px generator"):
        domain_generator(path, get_domain("golden-faces"), 128)
    assert TrainConfig(domain="cat", generator_size=512).generator_size == 512
    with pytest.raises(ConfigError, match="generator_size must be None .* or a power of two >= 64, got 500"):
        TrainConfig(domain="cat", generator_size=500)
    assert TrainConfig.from_dict({"domain": "cat"}).generator_size is None  # runs recorded before the option


def test_train_cli_takes_a_pkl(tmp_path, capsys):
    """train.run loads the .pkl, checks it against the preset and accepts --generator-size (it then stops at the
    missing data folder, which is read after the generator)."""
    from train import run as train_cli

    args = ["--domain", "golden-faces", "--data", str(tmp_path / "nodata"), "--stylegan", str(GOLDEN / "ada_tiny64.pkl"),
            "--workdir", str(tmp_path / "work")]
    assert train_cli.main(args) == 2
    assert "is 64px; pass --generator-size 64" in capsys.readouterr().err
    assert train_cli.main([*args, "--generator-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nodata: data folder not found" in err, err


def test_pipeline_export_keeps_the_nvidia_generator(tmp_path):
    """A run trained on a .pkl exports its generator (conv_clamp included) for synthesis, as for a .pt."""
    from types import SimpleNamespace

    import jax

    from smis_jax import export
    from smis_jax.nets import psp

    g = load_generator(GOLDEN / "ada_tiny64.pkl")
    c = g.config
    enc = psp.EncoderConfig(input_nc=19, style_num=c.n_latent, widths=(16, 16, 16, 16), units=(1, 1, 1, 1),
                            style_dim=c.style_dim)
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), psp.abstract_variables(enc))
    state = SimpleNamespace(**zeros)  # what export.write reads of a TrainState; the encoder is not under test
    out = export.write(tmp_path / "export", enc, state, g, np.zeros((c.n_latent, c.style_dim), np.float32), {})
    pipe = load_pipeline(out)
    assert pipe.generator.config == c and pipe.generator.config.conv_clamp == 0.8
    np.testing.assert_array_equal(pipe.generator.params["params"]["to_rgbs_3"]["bias"],
                                  g.params["params"]["to_rgbs_3"]["bias"])


def test_format_told_by_content(tmp_path):
    """A legacy (pre-zip) torch.save file is also a pickle stream, but not an NVIDIA one; names do not matter."""
    torch = pytest.importorskip("torch")
    legacy = tmp_path / "network.pkl"
    torch.save({"x": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert not nvidiafile.is_pickle(legacy)
    renamed = tmp_path / "generator.pt"
    renamed.write_bytes((GOLDEN / "tf_tiny64.pkl").read_bytes())
    assert nvidiafile.is_pickle(renamed) and load_generator(renamed).config.style_dim == 40


# ---------------------------------------------------------------------------------------------------------------
# Real shapes: a 1024 px ADA snapshot (G_ema, G and a D-sized network, random weights) converts within memory.

@pytest.mark.slow
def test_1024_ada_pickle_converts_within_memory(tmp_path):
    pytest.importorskip("torch")
    g_ema = nvp.ada_generator(1024, seed=0)
    g = nvp.ada_generator(1024, seed=1)
    rng = np.random.default_rng(2)
    d = nvp.PersistentObject("Discriminator", {"_parameters": {"w": rng.standard_normal(29_000_000, np.float32)},
                                               "_buffers": {}, "_modules": {}})
    path = nvp.dump(nvp.to_writer({"G": g, "D": d, "G_ema": g_ema, "augment_pipe": None,
                                   "training_set_kwargs": None}), tmp_path / "network-snapshot-1024.pkl")
    del g, d
    size_gb = path.stat().st_size / 2**30
    proc = _cli(path, tmp_path / "out")
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"pickle {size_gb:.2f} GiB, converter peak RSS {peak_gb:.2f} GiB")
    assert peak_gb < 6, f"peak RSS {peak_gb:.2f} GiB converting a {size_gb:.2f} GiB pickle"
    loaded = load_generator(tmp_path / "out")
    c = loaded.config
    assert (c.size, c.n_mlp, c.conv_clamp, c.feature_channels, c.n_latent) == (1024, 8, 256.0, 512, 18)
    np.testing.assert_array_equal(loaded.latent_avg, g_ema.modules["mapping"].state["_buffers"]["w_avg"])


def test_bench_labeling_takes_a_pkl(tmp_path, capsys):
    from smis_jax import bench

    out = tmp_path / "results.jsonl"
    pkl = GOLDEN / "tf_tiny64.pkl"
    assert bench.main(["labeling", "--quick", "--mode", "dense", "--repeats", "1", "--weights", str(pkl),
                       "--json-out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["original-jax", "ours"]  # no PyTorch row: that takes a rosinality .pt only
    assert all(r["weights"] == str(pkl) for r in rows) and rows[1]["labels_per_s"] > 0
