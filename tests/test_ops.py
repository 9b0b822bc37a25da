"""The fast ops in smis_jax.nets.ops against slow twins written plainly in numpy (and torch where torch has the op)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smis_jax.nets import ops

# Op-level comparisons of float32 results against float64 references: a few ulps of the output scale.
OP_TOL = 1e-5


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------------------------------------------------------
# Slow reference twins (float64 numpy, loops where that is the plainest way to say it).

def ref_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """x (B,H,W,C): zero-insert up-1 zeros after every sample, pad/crop, true-convolve, keep every down-th."""
    x = np.asarray(x, np.float64)
    k = np.asarray(kernel, np.float64)
    b, h, w, c = x.shape
    z = np.zeros((b, h * up, w * up, c))
    z[:, ::up, ::up, :] = x
    p0, p1 = pad
    z = np.pad(z, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    z = z[:, max(-p0, 0): z.shape[1] - max(-p1, 0), max(-p0, 0): z.shape[2] - max(-p1, 0), :]
    kh, kw = k.shape
    oh, ow = z.shape[1] - kh + 1, z.shape[2] - kw + 1
    kf = k[::-1, ::-1]  # convolution = correlation with the flipped kernel
    out = np.zeros((b, oh, ow, c))
    for i in range(kh):
        for j in range(kw):
            out += kf[i, j] * z[:, i: i + oh, j: j + ow, :]
    return out[:, ::down, ::down, :]


def ref_conv_same(x, w):
    """x (B,H,W,I), w (B,k,k,I,O) per-sample kernels; stride 1, zero pad k//2; correlation."""
    b, h, wd, _ = x.shape
    k = w.shape[1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[-1]))
    for n in range(b):
        for i in range(k):
            for j in range(k):
                out[n] += xp[n, i: i + h, j: j + wd, :] @ w[n, i, j]
    return out


def ref_conv_transpose_s2(x, w):
    """torch conv_transpose2d(stride=2, padding=0): out[2y+i, 2x+j] += x[y, x] @ w[i, j].  -> (B, 2H+k-2, ...)."""
    b, h, wd, _ = x.shape
    k = w.shape[1]
    out = np.zeros((b, 2 * (h - 1) + k, 2 * (wd - 1) + k, w.shape[-1]))
    for n in range(b):
        for i in range(k):
            for j in range(k):
                out[n, i: i + 2 * h: 2, j: j + 2 * wd: 2] += x[n] @ w[n, i, j]
    return out


def ref_modulated_conv2d(x, w_hwio, styles, demodulate, upsample):
    """rosinality's fused path: one explicit (k,k,I,O) weight per sample."""
    x, w_hwio, styles = (np.asarray(a, np.float64) for a in (x, w_hwio, styles))
    k, _, i, _ = w_hwio.shape
    wb = w_hwio[None] / math.sqrt(i * k * k) * styles[:, None, None, :, None]  # (B,k,k,I,O)
    if demodulate:
        wb = wb / np.sqrt(np.sum(wb**2, axis=(1, 2, 3), keepdims=True) + 1e-8)
    if upsample:
        y = ref_conv_transpose_s2(x, wb)
        return ref_upfirdn2d(y, ops.make_kernel() * 4, pad=(1, 1))
    return ref_conv_same(x, wb)


def ref_bilinear_align_corners(x, out_hw):
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    oh, ow = out_hw
    out = np.zeros((b, oh, ow, c))
    for i in range(oh):
        sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for j in range(ow):
            sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                            + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
    return out


# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("up,down,pad", [
    (1, 1, (1, 1)),    # up-conv blur
    (1, 1, (2, 2)),    # discriminator blur
    (2, 1, (2, 1)),    # ToRGB skip upsample
    (1, 2, (1, 1)),
    (2, 2, (1, 2)),
    (1, 1, (-1, 2)),   # negative pad crops
])
def test_upfirdn2d_matches_reference(rng, up, down, pad):
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)  # asymmetric: catches a missing flip
    got = ops.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad)
    want = ref_upfirdn2d(x, kernel, up, down, pad)
    assert got.shape == want.shape
    assert _rel(got, want) < OP_TOL


def test_upsample_doubles_and_matches_reference(rng):
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    got = ops.upsample(jnp.asarray(x))
    assert got.shape == (2, 10, 10, 3)
    assert _rel(got, ref_upfirdn2d(x, ops.make_kernel() * 4, up=2, pad=(2, 1))) < OP_TOL


def test_make_kernel():
    np.testing.assert_array_equal(ops.make_kernel() * 64, np.outer([1, 3, 3, 1], [1, 3, 3, 1]))


def test_conv_transpose_twin_matches_torch(rng):
    """The numpy transposed-conv twin itself against torch (so the twins are not only checked by the code)."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 4, 5, 3))
    w = rng.standard_normal((3, 3, 3, 2))  # HWIO
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(w.transpose(2, 3, 0, 1)), stride=2
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ref_conv_transpose_s2(x, w[None]), want, atol=1e-10)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("k,demodulate,upsample", [(3, True, False), (3, True, True), (1, False, False),
                                                   (3, False, True)])
def test_modulated_conv2d_matches_reference(rng, grouped, k, demodulate, upsample):
    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float32)
    w = rng.standard_normal((k, k, 4, 5)).astype(np.float32)
    s = (1 + 0.5 * rng.standard_normal((3, 4))).astype(np.float32)
    got = ops.modulated_conv2d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), demodulate, upsample, grouped=grouped)
    want = ref_modulated_conv2d(x, w, s, demodulate, upsample)
    assert got.shape == want.shape
    assert _rel(got, want) < OP_TOL


def test_grouped_and_input_scaling_agree_with_gradients(rng):
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 6)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 6, 5)).astype(np.float32))
    s = jnp.asarray((1 + 0.5 * rng.standard_normal((2, 6))).astype(np.float32))
    probe = jnp.asarray(rng.standard_normal((2, 16, 16, 5)).astype(np.float32))

    def loss(x, w, s, grouped):
        return jnp.sum(ops.modulated_conv2d(x, w, s, True, True, grouped=grouped) * probe)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    fast, slow = grad(x, w, s, False), grad(x, w, s, True)
    for a, b in zip(fast, slow):
        assert _rel(a, b) < OP_TOL


def test_equal_linear_and_pixel_norm(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, w, b))
    lin = x64 @ (w64 * 0.01 / math.sqrt(8)) + b64 * 0.01
    assert _rel(ops.equal_linear(x, w, b, 0.01), lin) < OP_TOL
    act = np.where(lin > 0, lin, 0.2 * lin) * math.sqrt(2)
    assert _rel(ops.equal_linear(x, w, b, 0.01, "fused_lrelu"), act) < OP_TOL
    pn = x64 / np.sqrt(np.mean(x64**2, axis=1, keepdims=True) + 1e-8)
    assert _rel(ops.pixel_norm(x), pn) < OP_TOL
    with pytest.raises(ValueError, match="activation"):
        ops.equal_linear(x, w, b, 1.0, "relu")


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), (32, 32)), ((5, 7), (9, 4)), ((1, 3), (4, 1))])
def test_bilinear_align_corners(rng, in_hw, out_hw):
    x = rng.standard_normal((2, *in_hw, 3)).astype(np.float32)
    got = ops.bilinear_align_corners(jnp.asarray(x), out_hw)
    assert _rel(got, ref_bilinear_align_corners(x, out_hw)) < OP_TOL


def test_bilinear_twin_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 5, 7, 3))
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(9, 12),
                                           mode="bilinear", align_corners=True).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ref_bilinear_align_corners(x, (9, 12)), want, atol=1e-10)


def ref_adaptive_avg_pool(x, out_hw):
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    out = np.zeros((b, *out_hw, c))
    for i in range(out_hw[0]):
        y0, y1 = math.floor(i * h / out_hw[0]), math.ceil((i + 1) * h / out_hw[0])
        for j in range(out_hw[1]):
            x0, x1 = math.floor(j * w / out_hw[1]), math.ceil((j + 1) * w / out_hw[1])
            out[:, i, j] = x[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), (4, 4)), ((8, 8), (8, 8)), ((7, 10), (3, 4)), ((4, 4), (8, 8))])
def test_adaptive_avg_pool(rng, in_hw, out_hw):
    x = rng.standard_normal((2, *in_hw, 3)).astype(np.float32)
    assert _rel(ops.adaptive_avg_pool(jnp.asarray(x), out_hw), ref_adaptive_avg_pool(x, out_hw)) < OP_TOL


def test_adaptive_pool_twin_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 7, 10, 3))
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), (3, 4))
    np.testing.assert_allclose(ref_adaptive_avg_pool(x, (3, 4)), want.numpy().transpose(0, 2, 3, 1), atol=1e-12)
