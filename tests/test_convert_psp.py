"""pSp checkpoint conversion: the converted directory, the real IR-SE-50 at real shapes, and every refusal."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from smis_jax.io import ConversionError, StateDict, load_encoder, load_pipeline
from smis_jax.io.psp import (
    _torch_shape,
    convert,
    convert_checkpoint,
    encoder_from_state_dict,
    encoder_key_table,
    infer_encoder_config,
)
from smis_jax.nets import psp, stylegan2

torch = pytest.importorskip("torch")

TINY_UNITS = (1, 2, 2, 1)
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_pt(golden):
    return golden / "psp_tiny_celebamask.pt"


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_pt):
    return torch.load(tiny_pt, map_location="cpu", weights_only=False)


def _write(ckpt, path):
    torch.save(ckpt, path)
    return path


def test_converted_directory(tiny_pt, tmp_path):
    out = convert(tiny_pt, tmp_path / "c", units=TINY_UNITS)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "psp" and cfg["label_nc"] == 19
    assert psp.EncoderConfig.from_json(cfg["encoder"]) == psp.EncoderConfig.golden(19, 12)
    gen_cfg = stylegan2.GeneratorConfig.from_json(cfg["generator"])
    assert gen_cfg.size == 128 and gen_cfg.n_latent == 12
    assert cfg["opts"]["encoder_type"] == "GradualStyleEncoder" and cfg["opts"]["style_num"] == 12

    pipe = load_pipeline(out)
    assert pipe.encoder.config == psp.EncoderConfig.golden(19, 12) and pipe.latent_avg.shape == (12, 64)
    assert pipe.generator.config == gen_cfg and len(pipe.generator.noises) == gen_cfg.num_layers
    # Loading the .pt directly (converted in memory) gives the same trees.
    from_pt = load_pipeline(tiny_pt, units=TINY_UNITS)
    jax.tree.map(np.testing.assert_array_equal, from_pt.encoder.params, pipe.encoder.params)
    jax.tree.map(np.testing.assert_array_equal, from_pt.encoder.batch_stats, pipe.encoder.batch_stats)
    jax.tree.map(np.testing.assert_array_equal, from_pt.generator.params, pipe.generator.params)
    np.testing.assert_array_equal(load_encoder(tiny_pt, units=TINY_UNITS).latent_avg, pipe.latent_avg)
    with pytest.raises(FileExistsError):
        convert(tiny_pt, out, units=TINY_UNITS)


def test_equal_width_stages_need_explicit_units(tiny_pt, tmp_path):
    with pytest.raises(ConversionError, match=r"cannot infer the 4 encoder stages .*--units u1,u2,u3,u4"):
        convert_checkpoint(tiny_pt)
    with pytest.raises(ConversionError, match="do not fit"):
        convert_checkpoint(tiny_pt, units=(2, 1, 2, 1))  # unit 1 (width 32) inside a width-16 stage
    with pytest.raises(ConversionError, match="cannot infer"):
        load_encoder(tiny_pt)
    # The CLI reports it as a one-line error, exit status 2.
    proc = subprocess.run([sys.executable, "-m", "convert", "psp", str(tiny_pt), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "units" in proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------------------
# The real IR-SE-50 (input_nc 19, 18 styles) from a random checkpoint at real shapes.

def _random_state_dict(cfg, seed=0):
    """Random encoder state dict in PyTorch layout (+ num_batches_tracked) as torch tensors.

    Every tensor is a view at its own offset into one shared random pool, so ``torch.save`` writes a 10 MB file
    for the 1.07 GB of parameters (first-touching 1 GB several times would dominate the test's run time).
    """
    shapes = psp.abstract_variables(cfg)
    pool = torch.from_numpy(np.random.default_rng(seed).standard_normal(3 << 20).astype(np.float32))
    positive = pool.abs() + 0.5  # running_var
    sd = {}
    for k, (coll, path, key, transform) in enumerate(encoder_key_table(cfg, prefix="encoder.")):
        leaf = shapes[coll]
        for p in path:
            leaf = leaf[p]
        shape = _torch_shape(leaf.shape, transform)
        source = positive if key.endswith("running_var") else pool
        offset = (k * 7919) % (pool.numel() - int(np.prod(shape)) + 1)
        sd[key] = source[offset:offset + int(np.prod(shape))].view(shape)
        if key.endswith("running_var"):
            sd[key.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    return sd


@pytest.fixture(scope="module")
def real_pt(tmp_path_factory):
    cfg = psp.EncoderConfig.ir_se50(19, 18)
    sd = _random_state_dict(cfg)
    path = tmp_path_factory.mktemp("irse50") / "encoder.pt"
    torch.save(sd, path)
    return path, len(sd)


def test_real_ir_se50_converts(real_pt):
    from smis_jax.io import torchfile

    path, n_keys = real_pt
    assert n_keys == 621  # CONVERSION.md 3.2
    flat = torchfile.load(path)
    sd = StateDict(flat, source=str(path))
    cfg, params, batch_stats = encoder_from_state_dict(sd, prefix="encoder.")
    sd.finish()  # every key used (num_batches_tracked deliberately)
    assert cfg == psp.EncoderConfig.ir_se50(19, 18)  # widths, units (3,4,14,3), styles, SE 16 all inferred
    assert sum(x.size for x in jax.tree.leaves(params)) == 267_145_920
    # Spot checks of the layout transforms at real shapes.
    np.testing.assert_array_equal(params["body_21"]["shortcut_conv"]["kernel"],
                                  flat["encoder.body.21.shortcut_layer.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["styles_17"]["linear"]["weight"], flat["encoder.styles.17.linear.weight"].T)
    np.testing.assert_array_equal(batch_stats["body_23"]["bn2"]["var"], flat["encoder.body.23.res_layer.4.running_var"])
    assert params["styles_17"]["conv_5"]["kernel"].shape == (3, 3, 512, 512)


@pytest.mark.slow
def test_real_ir_se50_forward(real_pt):
    from smis_jax.io import torchfile

    path, _ = real_pt
    sd = StateDict(torchfile.load(path), source=str(path))
    cfg, params, batch_stats = encoder_from_state_dict(sd, prefix="encoder.")
    # N(0, 1) conv kernels at widths up to 512 overflow float32 over 24 units; give them PyTorch-like scale.
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a / np.sqrt(np.prod(a.shape[:3])) if path[-1].key == "kernel" else a, params)
    enc = psp.LoadedEncoder(cfg, params, batch_stats)
    x = jax.nn.one_hot(np.random.default_rng(1).integers(0, 19, (1, 256, 256)), 19)
    for train in (False, True):
        codes = enc.encode(x, train=train)
        assert codes.shape == (1, 18, 512) and np.isfinite(np.asarray(codes)).all()


# ---------------------------------------------------------------------------------------------------------------
# Refusals: each names the key / file and the reason.

def _modified(tiny_ckpt, tmp_path, edit):
    ckpt = {"state_dict": dict(tiny_ckpt["state_dict"]), "latent_avg": tiny_ckpt["latent_avg"],
            "opts": dict(tiny_ckpt["opts"])}
    edit(ckpt)
    return _write(ckpt, tmp_path / "edited.pt")


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["state_dict"].pop("encoder.body.4.res_layer.3.weight"),
     r"missing key 'encoder.body.4.res_layer.3.weight' \(expected shape \(32, 32, 3, 3\)\)"),
    (lambda c: c["state_dict"].__setitem__("encoder.styles.3.linear.bias", torch.zeros(65)),
     r"key 'encoder.styles.3.linear.bias' has shape \(65,\), expected \(64,\)"),
    (lambda c: c["state_dict"].__setitem__("encoder.extra.weight", torch.zeros(3)),
     r"unexpected key 'encoder.extra.weight' with shape \(3,\)"),
    (lambda c: c["state_dict"].pop("decoder.to_rgbs.0.bias"), r"missing key 'decoder.to_rgbs.0.bias'"),
    (lambda c: c["state_dict"].pop("encoder.styles.11.convs.10.weight"), r"missing key 'encoder.styles.11.convs.10"),
    (lambda c: c["opts"].__setitem__("encoder_type", "BackboneEncoderUsingLastLayerIntoWPlus"),
     r"encoder_type 'BackboneEncoderUsingLastLayerIntoWPlus' is not supported"),
    (lambda c: c.pop("latent_avg"), r"no 'latent_avg' .* repeated to shape \(12, 64\)"),
    (lambda c: c.__setitem__("latent_avg", torch.zeros(3, 64)), r"latent_avg has shape \(3, 64\), expected \(12, 64\)"),
    (lambda c: c["opts"].__setitem__("style_num", 18), r"12 style heads but style_num=18"),
    (lambda c: c.pop("state_dict"), r"not a pSp checkpoint: no 'state_dict'"),
])
def test_bad_checkpoints(tiny_ckpt, tmp_path, edit, match):
    path = _modified(tiny_ckpt, tmp_path, edit)
    with pytest.raises(ConversionError, match=match) as e:
        convert_checkpoint(path, units=TINY_UNITS)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_rosinality_file_gets_a_hint(golden):
    with pytest.raises(ConversionError, match="use `python -m convert stylegan2`"):
        convert_checkpoint(golden / "stylegan2_tiny128.pt")


def test_latent_avg_shapes(tiny_ckpt, tmp_path):
    # (D,) and (1, D) broadcast to (S, D); without start_from_latent_avg the codes are W+ directly (zeros).
    row = tiny_ckpt["latent_avg"][0]
    _, trees = convert_checkpoint(_modified(tiny_ckpt, tmp_path, lambda c: c.__setitem__("latent_avg", row)),
                                  units=TINY_UNITS)
    np.testing.assert_array_equal(trees["latent_avg"], np.broadcast_to(row.numpy(), (12, 64)))
    path = _modified(tiny_ckpt, tmp_path,
                     lambda c: (c.pop("latent_avg"), c["opts"].update(start_from_latent_avg=False)))
    _, trees = convert_checkpoint(path, units=TINY_UNITS)
    np.testing.assert_array_equal(trees["latent_avg"], np.zeros((12, 64)))


def test_opts_keep_only_json_values(tiny_ckpt, tmp_path):
    def edit(c):
        c["opts"].update(exp_dir="/x", lr=0.5, tensor=torch.zeros(2), nested={"a": 1}, ids=[1, 2])
    config, _ = convert_checkpoint(_modified(tiny_ckpt, tmp_path, edit), units=TINY_UNITS)
    assert config["opts"]["exp_dir"] == "/x" and config["opts"]["lr"] == 0.5 and config["opts"]["ids"] == [1, 2]
    assert "tensor" not in config["opts"] and "nested" not in config["opts"]
    json.dumps(config)


def test_infer_checks_requested_input_nc(tiny_ckpt):
    sd = StateDict({k: v.numpy() for k, v in tiny_ckpt["state_dict"].items()}, source="tiny")
    with pytest.raises(ConversionError, match="takes 19 input channels .* input_nc=5"):
        infer_encoder_config(sd, input_nc=5, units=TINY_UNITS)
