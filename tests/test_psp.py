"""GradualStyleEncoder: golden parity (eval, train, BatchNorm update, loss, gradient), PyTorch-exact BatchNorm,
the config and the loaded-encoder API. Conversion details are in test_convert_psp.py.

About ``grad_input_conv``: the golden generator fed PyTorch a channels-last one-hot tensor
(``F.one_hot(...).permute(0, 3, 1, 2)``); PyTorch's channels-last float32 BatchNorm accumulates its batch
statistics with an error that grows with the number of pixels (~1e-4 relative at 2x256x256), and the first
conv's gradient amplifies it: the golden gradient is 1.9e-2 (relative) away from a float64 PyTorch run.
The original pipeline feeds contiguous NCHW tensors (``ToTensor``), where PyTorch float32 agrees with float64
to 1e-5. So the gradient is checked against PyTorch float32 on the original's contiguous layout (an independent
autograd run from the same .pt), and a second test pins down that the golden value is what channels-last gives.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FORWARD_TOL, GRAD_TOL, rel_err, count_traces
from smis_jax import data
from smis_jax.io import load_encoder
from smis_jax.io.psp import convert, encoder_key_table
from smis_jax.nets import psp

TINY_UNITS = (1, 2, 2, 1)  # equal widths 32, 32 in stages 2 and 3: not inferable from the keys


@pytest.fixture(scope="module")
def io(golden):
    return dict(np.load(golden / "psp_tiny_celebamask_io.npz"))


@pytest.fixture(scope="module")
def tiny_dir(golden, tmp_path_factory):
    return convert(golden / "psp_tiny_celebamask.pt", tmp_path_factory.mktemp("psp") / "tiny", units=TINY_UNITS)


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return load_encoder(tiny_dir)


def _path_of(torch_key: str, cfg) -> tuple[str, tuple[str, ...]]:
    for coll, path, key, _ in encoder_key_table(cfg, prefix=""):
        if key == torch_key:
            return coll, path
    raise KeyError(torch_key)


@pytest.fixture(scope="module")
def results(encoder, io):
    """Everything the golden file checks, from one compiled function: eval codes, train codes, the updated
    running statistics, the latent MSE and its gradient w.r.t. the first conv (HWIO)."""
    model = psp.GradualStyleEncoder(encoder.config)
    x = data.onehot(io["labels"], encoder.config.input_nc)

    @jax.jit
    def run(params, batch_stats, latent_avg, target, x):
        def loss_fn(kernel):
            p = {**params, "input_conv": {"kernel": kernel}}
            codes, new_vars = model.apply({"params": p, "batch_stats": batch_stats}, x, True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(codes + latent_avg - target)), (codes, new_vars["batch_stats"])

        (loss, (codes_train, new_stats)), grad = jax.value_and_grad(loss_fn, has_aux=True)(
            params["input_conv"]["kernel"])
        return codes_train, new_stats, loss, grad

    out = run(encoder.params, encoder.batch_stats, encoder.latent_avg, io["latent_target"], x)
    res = dict(zip(["codes_train", "stats", "loss", "grad_hwio"], jax.device_get(out)))
    res["codes_eval"] = np.asarray(encoder.encode(x))  # the public, jitted eval path
    return res


def test_eval_codes_and_wplus(results, encoder, io):
    assert rel_err(results["codes_eval"], io["codes_eval"]) < FORWARD_TOL
    assert rel_err(results["codes_eval"] + np.asarray(encoder.latent_avg), io["wplus_eval"]) < FORWARD_TOL
    np.testing.assert_array_equal(encoder.latent_avg, io["latent_avg"])


def test_train_codes(results, io):
    assert rel_err(results["codes_train"], io["codes_train"]) < FORWARD_TOL


def test_batchnorm_running_mean_update(results, encoder, io):
    coll, path = _path_of(str(io["bn_probe_name"]), encoder.config)
    assert coll == "batch_stats"
    after = functools.reduce(lambda t, k: t[k], path, results["stats"])
    before = functools.reduce(lambda t, k: t[k], path, encoder.batch_stats)
    assert rel_err(after, io["bn_probe_after"]) < FORWARD_TOL
    assert rel_err(before, io["bn_probe_after"]) > 10 * FORWARD_TOL  # the probe did move


def test_loss(results, io):
    assert rel_err(results["loss"], io["loss_train"]) < FORWARD_TOL


# ---------------------------------------------------------------------------------------------------------------
# A PyTorch twin of pSp's encoder (independent autograd), for the gradient; see the module docstring.

def _torch_encoder(cfg, state_dict):
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class SE(nn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1, bias=False), nn.Conv2d(c // r, c, 1, bias=False)

        def forward(self, x):
            return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))

    class Unit(nn.Module):
        def __init__(self, i, d, s):
            super().__init__()
            self.shortcut_layer = (nn.MaxPool2d(1, s) if i == d else
                                   nn.Sequential(nn.Conv2d(i, d, 1, s, bias=False), nn.BatchNorm2d(d)))
            self.res_layer = nn.Sequential(nn.BatchNorm2d(i), nn.Conv2d(i, d, 3, 1, 1, bias=False), nn.PReLU(d),
                                           nn.Conv2d(d, d, 3, s, 1, bias=False), nn.BatchNorm2d(d),
                                           SE(d, cfg.se_reduction))

        def forward(self, x):
            return self.res_layer(x) + self.shortcut_layer(x)

    class Linear(nn.Module):  # EqualLinear, lr_mul 1
        def __init__(self, n):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.zeros(n, n)), nn.Parameter(torch.zeros(n))

        def forward(self, x):
            return F.linear(x, self.weight / np.sqrt(x.shape[1]), self.bias)

    class Head(nn.Module):
        def __init__(self, c, d, spatial):
            super().__init__()
            layers = []
            for k in range(int(np.log2(spatial))):
                layers += [nn.Conv2d(c if k == 0 else d, d, 3, 2, 1), nn.LeakyReLU()]
            self.convs, self.linear = nn.Sequential(*layers), Linear(d)

        def forward(self, x):
            return self.linear(self.convs(x).flatten(1))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            w = cfg.widths
            self.input_layer = nn.Sequential(nn.Conv2d(cfg.input_nc, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                                             nn.PReLU(w[0]))
            self.body = nn.Sequential(*[Unit(i, d, s) for i, d, s in cfg.unit_specs()])
            self.styles = nn.ModuleList(Head(w[3], cfg.style_dim, cfg.head_spatial(j)) for j in range(cfg.style_num))
            self.latlayer1, self.latlayer2 = nn.Conv2d(w[2], w[3], 1), nn.Conv2d(w[1], w[3], 1)

        def forward(self, x):
            x = self.input_layer(x)
            for i, unit in enumerate(self.body):
                x = unit(x)
                if i == cfg.taps[0]:
                    c1 = x
                elif i == cfg.taps[1]:
                    c2 = x
                elif i == cfg.taps[2]:
                    c3 = x

            def up(a, b):
                return F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=True)

            p2 = up(c3, c2) + self.latlayer1(c2)
            p1 = up(p2, c1) + self.latlayer2(c1)
            return torch.stack([self.styles[j](c3 if j < 3 else p2 if j < 7 else p1) for j in range(cfg.style_num)], 1)

    model = Encoder()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    return model.train()


def _torch_grad(golden, cfg, io, layout):
    """First-conv gradient (OIHW) of the latent MSE from PyTorch float32, the one-hot input in ``layout``."""
    torch = pytest.importorskip("torch")
    from smis_jax.io import torchfile

    ckpt = torchfile.load(golden / "psp_tiny_celebamask.pt")
    sd = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    model = _torch_encoder(cfg, sd)
    for p in model.parameters():  # only the first conv's gradient is compared: skip the others' weight grads
        p.requires_grad_(False)
    model.input_layer[0].weight.requires_grad_(True)
    x = torch.from_numpy(data.onehot(io["labels"], cfg.input_nc)).permute(0, 3, 1, 2)
    x = x.contiguous() if layout == "contiguous" else x.contiguous(memory_format=torch.channels_last)
    loss = torch.nn.functional.mse_loss(model(x) + torch.from_numpy(ckpt["latent_avg"]),
                                        torch.from_numpy(io["latent_target"]))
    loss.backward()
    return model.input_layer[0].weight.grad.numpy()


@pytest.fixture(scope="module")
def torch_grad_contiguous(golden, encoder, io):
    return _torch_grad(golden, encoder.config, io, "contiguous")


def test_grad_input_conv(results, torch_grad_contiguous):
    grad_oihw = results["grad_hwio"].transpose(3, 2, 0, 1)
    assert rel_err(grad_oihw, torch_grad_contiguous) < GRAD_TOL


def test_golden_grad_differs_from_contiguous_torch(io, torch_grad_contiguous):
    """Pins the explanation above: the golden gradient is not what the original's layout gives."""
    assert rel_err(torch_grad_contiguous, io["grad_input_conv"]) > 10 * GRAD_TOL


@pytest.mark.slow
def test_golden_grad_is_the_channels_last_one(golden, encoder, io):
    """...but exactly what PyTorch's channels-last path gives."""
    assert rel_err(_torch_grad(golden, encoder.config, io, "channels_last"), io["grad_input_conv"]) < GRAD_TOL


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm against PyTorch directly (contiguous input: PyTorch's accurate path), train and eval.

def test_batchnorm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 7, 4)) * 2 + 0.5).astype(np.float32)  # NHWC
    scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean0, var0 = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    bn_t = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        for name, v in (("weight", scale), ("bias", bias), ("running_mean", mean0), ("running_var", var0)):
            getattr(bn_t, name).copy_(torch.from_numpy(v))
    variables = {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean0, "var": var0}}
    bn = psp.BatchNorm()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    y_eval = bn.apply(variables, x, False)
    assert rel_err(y_eval, bn_t.eval()(xt).detach().numpy().transpose(0, 2, 3, 1)) < FORWARD_TOL

    y_train, new = bn.apply(variables, x, True, mutable=["batch_stats"])
    y_t = bn_t.train()(xt).detach().numpy().transpose(0, 2, 3, 1)
    assert rel_err(y_train, y_t) < FORWARD_TOL
    assert rel_err(new["batch_stats"]["mean"], bn_t.running_mean.numpy()) < FORWARD_TOL
    assert rel_err(new["batch_stats"]["var"], bn_t.running_var.numpy()) < FORWARD_TOL  # unbiased batch variance


def test_prelu_is_per_channel():
    x = jnp.array([[-2.0, -2.0, 3.0]])
    y = psp.PReLU().apply({"params": {"alpha": jnp.array([0.5, 0.1, 0.7])}}, x)
    np.testing.assert_allclose(y, [[-1.0, -0.2, 3.0]])


# ---------------------------------------------------------------------------------------------------------------
# Config and API.

def test_config_presets_and_taps():
    real = psp.EncoderConfig.ir_se50(19, 18)
    assert real.taps == (6, 20, 23) and real.n_units == 24
    strides = [s for _, _, s in real.unit_specs()]
    assert [i for i, s in enumerate(strides) if s == 2] == [0, 3, 7, 21]
    tiny = psp.EncoderConfig.golden()
    assert tiny.taps == (2, 4, 5)
    assert psp.EncoderConfig.from_json(tiny.to_json()) == tiny
    assert hash(psp.EncoderConfig.from_json(tiny.to_json())) == hash(tiny)
    assert [psp.EncoderConfig.head_spatial(j) for j in (0, 2, 3, 6, 7, 17)] == [16, 16, 32, 32, 64, 64]


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_nc=0, style_num=18), "input_nc"),
    (dict(input_nc=19, style_num=0), "style_num"),
    (dict(input_nc=19, style_num=18, widths=(64, 128, 256)), "4 stages"),
    (dict(input_nc=19, style_num=18, units=(3, 0, 14, 3)), "positive"),
    (dict(input_nc=19, style_num=18, widths=(8, 128, 256, 512)), "se_reduction"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        psp.EncoderConfig(**kwargs)


def test_param_count_of_real_encoder():
    # SPEC.md section 2: 267,145,920 trainable parameters for CelebAMask (input_nc 19, 18 styles).
    shapes = psp.abstract_variables(psp.EncoderConfig.ir_se50(19, 18))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 267_145_920
    assert sum(x.size for x in jax.tree.leaves(shapes["batch_stats"])) == 2 * 12_160


def test_encode_api(encoder, results, io):
    x = data.onehot(io["labels"], 19)
    codes = encoder.encode(x)
    assert codes.shape == (2, 12, 64)
    np.testing.assert_array_equal(codes, results["codes_eval"])
    np.testing.assert_allclose(encoder.wplus(x), codes + encoder.latent_avg, rtol=0, atol=1e-6)
    with count_traces() as traced:
        encoder.encode(x[::-1].copy())  # same shape: no new trace
    assert traced() == 0
    with pytest.raises(ValueError, match="256, 256, 19"):
        encoder.encode(x[:, :128])


def test_init_draws_what_each_layer_initialiser_draws():
    """``init_variables`` cuts every leaf from two draws; Flax's own ``init`` runs each layer's initialiser. Same
    tree, same constants, and each random leaf from the same distribution: PyTorch's rule, written out here once
    more (conv kernels and their biases U(+-1/sqrt(fan_in)), fan_in = kh * kw * c_in of the kernel; the EqualLinear
    weight N(0, 1)), which Flax's draws must obey too. A uniform leaf never exceeds its bound and (64 draws or more)
    reaches 0.9 of it; pooled over all kernels and over all biases, the draws' std is 1/sqrt(3) of the bound within
    10%. A fan-in off by 2x (bounds off by 1.41x) breaks one or the other; so does a bias left at zero or a normal
    weight drawn uniform."""
    cfg = psp.EncoderConfig(input_nc=3, style_num=1, widths=(8, 16, 16, 32), units=(1, 1, 1, 1), style_dim=16,
                            se_reduction=8)
    x = jnp.zeros((1, psp.INPUT_SIZE, psp.INPUT_SIZE, 3))
    # Flax's init on an RBG key: the same initialisers, compiled in 3 s rather than threefry's 10.
    theirs = jax.jit(lambda k: psp.GradualStyleEncoder(cfg).init(k, x, False))(jax.random.key(0, impl="rbg"))
    ours = psp.init_variables(cfg, jax.random.key(0))
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)

    def parent(tree, path):
        for entry in path[:-1]:
            tree = tree[entry.key]
        return tree

    checked = 0
    pooled = {"ours": {"kernel": [], "bias": []}, "flax": {"kernel": [], "bias": []}}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        a, b = np.asarray(a), np.asarray(b)
        name = jax.tree_util.keystr(path)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if np.all(b == b.flat[0]):
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        assert np.unique(a).size > a.size // 2, name  # drawn, not a constant
        leaf = path[-1].key
        if leaf == "weight":  # EqualLinear: N(0, 1)
            assert a.size >= 256 and abs(a.std() - 1) < 0.1 and abs(b.std() - 1) < 0.1, (name, a.std(), b.std())
        else:
            assert leaf in ("kernel", "bias"), name
            kernel = np.shape(parent(ours, path)["kernel"])
            bound = 1 / np.sqrt(np.prod(kernel[:-1]))
            for who, v in (("ours", a), ("flax", b)):
                assert np.abs(v).max() <= bound * (1 + 1e-6), (who, name, np.abs(v).max(), bound)
                if v.size >= 64:
                    assert np.abs(v).max() > 0.9 * bound, (who, name, np.abs(v).max(), bound)
                pooled[who][leaf].append(v.ravel() / bound)
        if b.size >= 256:
            assert 1 / 1.1 < a.std() / b.std() < 1.1, (name, a.std(), b.std())
        checked += 1
    for who, kinds in pooled.items():
        for leaf, values in kinds.items():
            values = np.concatenate(values)
            assert values.size >= 100 and abs(values.std() * np.sqrt(3) - 1) < 0.1, (who, leaf, values.std())
    assert checked >= 30  # every conv kernel and bias, the EqualLinear weight
    # Different keys draw different encoders; the same key the same one.
    again, other = psp.init_variables(cfg, jax.random.key(0)), psp.init_variables(cfg, jax.random.key(1))
    for a, b, c in zip(jax.tree.leaves(ours["params"]), jax.tree.leaves(again["params"]), jax.tree.leaves(other["params"])):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(jax.tree.leaves(ours["params"]), jax.tree.leaves(other["params"])))


# ---------------------------------------------------------------------------------------------------------------
# Input size: the built-in 64 px domains' encoder reads 64x64 masks.

def test_input_size_scales_the_taps_and_heads():
    """At input 64 every map is a quarter of pSp's side: taps at 16, 8, 4 and heads of 4, 3, 2 convs (a head
    reading an s x s map has log2(s)); at 256 the heads have 6, 5, 4 as in pSp."""
    small = psp.EncoderConfig(input_nc=7, style_num=10, widths=(8, 16, 16, 32), units=(1, 1, 1, 1), style_dim=16,
                              se_reduction=8, input_size=64)
    assert [small.spatial_of(j) for j in (0, 2, 3, 6, 7, 9)] == [4, 4, 8, 8, 16, 16]
    assert [psp.EncoderConfig.head_spatial(j) for j in (0, 3, 7)] == [16, 32, 64]
    variables = psp.abstract_variables(small)
    heads = {j: sorted(k for k in variables["params"][f"styles_{j}"] if k.startswith("conv_")) for j in range(10)}
    assert [len(heads[j]) for j in (0, 2, 3, 6, 7, 9)] == [2, 2, 3, 3, 4, 4]
    codes, inter = psp.GradualStyleEncoder(small).apply(
        psp.init_variables(small, jax.random.key(0)), jnp.zeros((2, 64, 64, 7)), False, mutable=["intermediates"])
    assert codes.shape == (2, 10, 16)
    assert [inter["intermediates"][n][0].shape[1] for n in ("c1", "c2", "c3", "p2", "p1")] == [16, 8, 4, 8, 16]
    with pytest.raises(ValueError, match="64, 64, 7"):
        psp.GradualStyleEncoder(small).apply(psp.init_variables(small, jax.random.key(0)), jnp.zeros((1, 256, 256, 7)))
    # config.json records it; records written before it existed read as pSp's 256
    assert psp.EncoderConfig.from_json(small.to_json()) == small
    old = {k: v for k, v in small.to_json().items() if k != "input_size"}
    assert psp.EncoderConfig.from_json(old).input_size == 256
    for bad in (48, 16, 0):
        with pytest.raises(ValueError, match="input_size"):
            psp.EncoderConfig(input_nc=7, style_num=10, input_size=bad)


def test_reduce_onehot_block_mode_and_sparse_rule():
    # One 8x8 mask of 3 classes reduced to 2x2 (4x4 blocks), worked out by hand:
    # top-left block: 10 pixels of class 1, 6 of class 2 -> 1; top-right: 8 of class 0 and 8 of class 2 -> the
    # lower id 0 (dense), 2 (sparse: an annotated class beats class 0); bottom-left: 15 of 0 and one of 1 -> 0
    # (dense), 1 (sparse); bottom-right: all 2 -> 2.
    m = np.zeros((8, 8), np.int64)
    m[:4, :4] = 1
    m[:4, :4].flat[:6] = 2
    m[:4, 4:] = 2
    m[:2, 4:] = 0
    m[7, 0] = 1
    m[4:, 4:] = 2
    onehot = jax.nn.one_hot(m[None], 3)
    dense = np.argmax(psp.reduce_onehot(onehot, 2), -1)[0]
    sparse = np.argmax(psp.reduce_onehot(onehot, 2, sparse=True), -1)[0]
    np.testing.assert_array_equal(dense, [[1, 0], [0, 2]])
    np.testing.assert_array_equal(sparse, [[1, 2], [1, 2]])
    # nearest x4 upsampling (the built-in masks at 256) comes back exactly; same size is the identity
    small = np.random.default_rng(0).integers(0, 7, (3, 64, 64))
    big = np.repeat(np.repeat(small, 4, 1), 4, 2)
    np.testing.assert_array_equal(np.argmax(psp.reduce_onehot(jax.nn.one_hot(big, 7), 64), -1), small)
    x = jax.nn.one_hot(small, 7)
    assert psp.reduce_onehot(x, 64) is x


# ---------------------------------------------------------------------------------------------------------------
# The offset head (beyond pSp): the encoder's spatial output for the generator's r x r block.

def test_offset_head_starts_at_zero_reads_its_map_and_leaves_the_codes_alone():
    """A fresh head adds nothing (its last conv starts at zero) and the codes are pSp's encoder's with the same
    weights; with weights, the offset is conv3x3 -> lrelu 0.2 -> conv3x3 of the map of its side (p2 at 8 for a
    64-input encoder, c3 at 4, p1 at 16), written out here with lax; configs name what is wrong."""
    plain = psp.EncoderConfig(input_nc=7, style_num=10, widths=(8, 16, 16, 32), units=(1, 1, 1, 1), style_dim=16,
                              se_reduction=8, input_size=64)
    head = dataclasses.replace(plain, offset_res=8, offset_channels=12)
    variables = psp.init_variables(head, jax.random.key(0))
    assert set(variables["params"]) - set(psp.abstract_variables(plain)["params"]) == {"offset_head"}
    rng = np.random.default_rng(0)
    x = jax.nn.one_hot(rng.integers(0, 7, (2, 64, 64)), 7)
    (codes, offset), inter = psp.GradualStyleEncoder(head).apply(variables, x, False, mutable=["intermediates"])
    assert offset.shape == (2, 8, 8, 12) and not np.any(np.asarray(offset))
    shared = {"params": {k: v for k, v in variables["params"].items() if k != "offset_head"},
              "batch_stats": variables["batch_stats"]}
    np.testing.assert_array_equal(codes, psp.GradualStyleEncoder(plain).apply(shared, x, False))

    p = dict(variables["params"]["offset_head"])
    p["zero_kernel"] = jnp.asarray(rng.normal(0, 0.1, p["zero_kernel"].shape), jnp.float32)
    p["zero_bias"] = jnp.asarray(rng.normal(0, 0.1, p["zero_bias"].shape), jnp.float32)
    trained = {"params": {**variables["params"], "offset_head": p}, "batch_stats": variables["batch_stats"]}
    _, offset = psp.GradualStyleEncoder(head).apply(trained, x, False)

    def conv(a, k, b):
        return jax.lax.conv_general_dilated(a, k, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST) + b

    hidden = jax.nn.leaky_relu(conv(inter["intermediates"]["p2"][0], p["conv_0"]["kernel"], p["conv_0"]["bias"]), 0.2)
    want = conv(hidden, p["zero_kernel"], p["zero_bias"])
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_allclose(offset, want, rtol=1e-4, atol=1e-5)
    for res, side in ((4, 4), (16, 16)):
        cfg = dataclasses.replace(plain, offset_res=res, offset_channels=3)
        assert psp.abstract_variables(cfg)["params"]["offset_head"]["zero_kernel"].shape == (3, 3, 32, 3)
        out = jax.eval_shape(lambda v: psp.GradualStyleEncoder(cfg).apply(v, x, False), psp.abstract_variables(cfg))
        assert out[1].shape == (2, side, side, 3)
    # config.json records it; records written before it existed read as pSp's encoder (no head)
    assert psp.EncoderConfig.from_json(head.to_json()) == head
    old = {k: v for k, v in head.to_json().items() if not k.startswith("offset_")}
    assert psp.EncoderConfig.from_json(old).offset_res == 0
    for kwargs, match in ((dict(offset_res=5, offset_channels=4), "offset_res must be 0 .* 4, 8, 16 .* got 5"),
                          (dict(offset_res=8), "offset_channels must be >= 1 with offset_res 8, got 0"),
                          (dict(offset_channels=4), "offset_channels 4 given without an offset_res")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(plain, **kwargs)
    # the loaded encoder: encode() gives the codes, encode_with_offsets() the generator's {res: offset} too
    loaded = psp.LoadedEncoder(head, trained["params"], trained["batch_stats"])
    onehot256 = jnp.repeat(jnp.repeat(x, 4, axis=1), 4, axis=2)
    codes2, offsets = loaded.encode_with_offsets(onehot256)
    assert set(offsets) == {8}
    np.testing.assert_allclose(offsets[8], offset, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.encode(onehot256), codes2)
    assert psp.LoadedEncoder(plain, shared["params"], shared["batch_stats"]).encode_with_offsets(onehot256)[1] is None
