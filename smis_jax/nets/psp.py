"""pSp GradualStyleEncoder (IR-SE bottlenecks + FPN + per-style heads) in Flax Linen, and its loaders.

Maps a one-hot label map ``(B, 256, 256, input_nc)`` (NHWC) to W+ codes ``(B, style_num, style_dim)``, before
``latent_avg`` is added. Layer for layer it is pSp's ``GradualStyleEncoder(50, 'ir_se')`` (SPEC.md section 2,
CONVERSION.md 3.2) with the stage widths/units configurable, so the real IR-SE-50 and the tiny golden config are
the same code. The input side is configurable too (``input_size``, default pSp's 256): every spatial size below
scales with it, and a head reading an ``s x s`` map has ``log2(s)`` convs (the built-in 64 px domains read 64x64
masks: taps at 16, 8, 4). At 256:

    input layer   conv3x3(input_nc -> widths[0]) -> BN -> PReLU                                   256^2
    body          stages s=0..3, units[s] IR-SE bottlenecks each, the first with stride 2      128, 64, 32, 16
    taps          c1 = last unit of stage 1 (64^2), c2 = of stage 2 (32^2), c3 = of stage 3 (16^2)
    FPN           p2 = up(c3) + latlayer1(c2);  p1 = up(p2) + latlayer2(c1)    (bilinear, align_corners=True)
    heads         styles 0-2 read c3, 3-6 read p2, 7.. read p1; each log2(spatial) x [conv3x3 s2 + lrelu 0.01]
                  down to 1x1, then EqualLinear(lr_mul=1)

BatchNorm matches PyTorch exactly (see :class:`BatchNorm`); stride-2 convs pad (1, 1) on both sides (Flax's
'SAME' would pad (0, 1)); ``MaxPool2d(1, s)`` shortcuts are strided slices.

Parameter tree (NHWC / HWIO; ``batch_stats`` holds the BN running statistics)::

    input_conv/kernel  input_bn/{scale,bias}  input_prelu/alpha
    body_{i}/{bn1, conv1/kernel, prelu/alpha, conv2/kernel, bn2, se/{fc1,fc2}/kernel[, shortcut_conv, shortcut_bn]}
    latlayer1/{kernel,bias}  latlayer2/{kernel,bias}
    styles_{j}/{conv_{k}/{kernel,bias}, linear/{weight,bias}}
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from smis_jax.errors import ConfigError
from smis_jax.nets import ops
from smis_jax.nets.stylegan2 import LoadedGenerator

__all__ = [
    "INPUT_SIZE",
    "EncoderConfig",
    "codes_and_offsets",
    "reduce_onehot",
    "BatchNorm",
    "PReLU",
    "Conv2d",
    "GradualStyleEncoder",
    "LoadedEncoder",
    "Pipeline",
    "abstract_variables",
]

INPUT_SIZE = 256  # pSp's input side (EncoderConfig.input_size's default): heads of 4/5/6 stride-2 convs from 16/32/64
COARSE_END, MIDDLE_END = 3, 7  # styles [0,3) read c3, [3,7) read p2, [7,S) read p1


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a GradualStyleEncoder; hashable (it keys the jit cache).

    input_nc: one-hot depth (= number of label classes). style_num: number of W+ layers produced.
    widths/units: channels and bottleneck count of the four IR-SE stages (IR-SE-50: 64,128,256,512 / 3,4,14,3).
    style_dim: W dimension of each code. se_reduction: squeeze-excitation channel reduction.
    """

    input_nc: int
    style_num: int
    widths: tuple[int, ...] = (64, 128, 256, 512)
    units: tuple[int, ...] = (3, 4, 14, 3)
    style_dim: int = 512
    se_reduction: int = 16
    input_size: int = INPUT_SIZE  # side of the one-hot masks it reads (a power of two >= 32)
    # Beyond pSp (0 = none, the paper's encoder): a head that also predicts a spatial offset for the generator's
    # ``offset_res`` block (input/16, input/8 or input/4: it reads c3, p2 or p1), ``offset_channels`` deep (that
    # block's width); see :class:`OffsetHead`.
    offset_res: int = 0
    offset_channels: int = 0

    def __post_init__(self):
        # JSON round trips give lists; keep the dataclass hashable.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))
        problems = []
        if int(self.input_nc) < 1:
            problems.append(f"input_nc must be >= 1, got {self.input_nc}")
        if int(self.style_num) < 1:
            problems.append(f"style_num must be >= 1, got {self.style_num}")
        if len(self.widths) != 4 or len(self.units) != 4:
            problems.append(f"widths and units need 4 stages, got {self.widths} and {self.units}")
        if any(w < 1 for w in self.widths) or any(u < 1 for u in self.units):
            problems.append(f"widths and units must be positive, got {self.widths} and {self.units}")
        if int(self.style_dim) < 1:
            problems.append(f"style_dim must be >= 1, got {self.style_dim}")
        if int(self.se_reduction) < 1 or any(w // max(int(self.se_reduction), 1) < 1 for w in self.widths):
            problems.append(f"se_reduction {self.se_reduction} leaves no SE channels for widths {self.widths}")
        s = int(self.input_size)
        if s < 32 or s & (s - 1):
            problems.append(f"input_size must be a power of two >= 32, got {self.input_size}")
        r = int(self.offset_res)
        if r and (s < 32 or s & (s - 1) or r not in (s // 16, s // 8, s // 4)):
            problems.append(f"offset_res must be 0 (no offset head) or one of the encoder's map sides {s // 16}, "
                            f"{s // 8}, {s // 4} (input/16, /8, /4), got {self.offset_res}")
        if r and int(self.offset_channels) < 1:
            problems.append(f"offset_channels must be >= 1 with offset_res {r}, got {self.offset_channels}")
        if not r and int(self.offset_channels):
            problems.append(f"offset_channels {self.offset_channels} given without an offset_res")
        if problems:
            raise ConfigError("EncoderConfig: " + "; ".join(problems))

    @classmethod
    def ir_se50(cls, input_nc: int, style_num: int = 18) -> "EncoderConfig":
        """The real pSp encoder: IR-SE-50, 512-d styles (18 styles for 1024px generators, 16 for 512, 14 for 256)."""
        return cls(input_nc=input_nc, style_num=style_num)

    @classmethod
    def golden(cls, input_nc: int = 19, style_num: int = 12) -> "EncoderConfig":
        """The golden test config (psp_tiny_celebamask): widths 16,32,32,64, units 1,2,2,1, 64-d styles."""
        return cls(input_nc=input_nc, style_num=style_num, widths=(16, 32, 32, 64), units=(1, 2, 2, 1), style_dim=64)

    @property
    def n_units(self) -> int:
        return sum(self.units)

    @property
    def taps(self) -> tuple[int, int, int]:
        """Body indices whose outputs feed the FPN: last unit of stages 2, 3, 4 (IR-SE-50: 6, 20, 23)."""
        ends = np.cumsum(self.units) - 1
        return int(ends[1]), int(ends[2]), int(ends[3])

    def unit_specs(self) -> list[tuple[int, int, int]]:
        """``(in_channels, depth, stride)`` of every body unit; the first unit of each stage has stride 2."""
        specs, in_c = [], self.widths[0]
        for width, n in zip(self.widths, self.units):
            for k in range(n):
                specs.append((in_c, width, 2 if k == 0 else 1))
                in_c = width
        return specs

    @staticmethod
    def head_spatial(j: int, input_size: int = INPUT_SIZE) -> int:
        """Side of the feature map style head ``j`` reads: input/16 (coarse), input/8 (middle) or input/4 (fine);
        16, 32, 64 at pSp's 256."""
        return input_size // (16 if j < COARSE_END else 8 if j < MIDDLE_END else 4)

    def spatial_of(self, j: int) -> int:
        """:meth:`head_spatial` of head ``j`` at this config's ``input_size``."""
        return self.head_spatial(j, self.input_size)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EncoderConfig":
        """The inverse of :meth:`to_json`; records written before ``input_size`` existed read as 256."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"EncoderConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


class BatchNorm(nn.Module):
    """PyTorch ``BatchNorm2d`` semantics on NHWC (Flax's ``nn.BatchNorm`` updates running_var with the biased var).

    train: normalise with the batch mean and biased variance over (B, H, W); running stats move by
    ``momentum`` (PyTorch convention, 0.1 = weight of the new value) towards the batch mean and the *unbiased*
    variance ``var * n / (n - 1)``. eval: normalise with the running stats. eps inside the rsqrt.
    """

    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            n = x.size // c
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * lax.stop_gradient(var) * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * (lax.rsqrt(var + self.eps) * scale) + bias


class PReLU(nn.Module):
    """Per-channel PReLU ``max(0,x) + a*min(0,x)``, a initialised to 0.25 as in PyTorch."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x >= 0, x, alpha * x)


def _torch_uniform(fan_in: int):
    """PyTorch's default conv/linear init, kaiming_uniform(a=sqrt 5) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv2d(nn.Module):
    """PyTorch ``Conv2d`` on NHWC with symmetric padding ``kernel // 2`` and an HWIO kernel (PyTorch init)."""

    features: int
    kernel: int = 3
    stride: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, k = x.shape[-1], self.kernel
        fan_in = c_in * k * k
        w = self.param("kernel", _torch_uniform(fan_in), (k, k, c_in, self.features))  # HWIO
        p = k // 2
        # XLA's own kernel gradient: ops.conv's k*k matmuls (which pay for the generator's) measured no faster here
        # (the built-in 64x64 encoder's step, batch 32: 966 ms XLA's, 1092 ms matmuls; BENCHMARKS.md).
        y = lax.conv_general_dilated(x, w.astype(x.dtype), (self.stride, self.stride), ((p, p), (p, p)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", _torch_uniform(fan_in), (self.features,))
        return y


class SqueezeExcite(nn.Module):
    """SE gate: ``x * sigmoid(fc2(relu(fc1(mean_HW(x)))))`` with bias-free 1x1 convs. x: (B, H, W, C)."""

    reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        s = nn.relu(Conv2d(c // self.reduction, kernel=1, name="fc1")(s))
        s = nn.sigmoid(Conv2d(c, kernel=1, name="fc2")(s))
        return x * s


class BottleneckIRSE(nn.Module):
    """pSp ``bottleneck_IR_SE(in, depth, stride)``: x (B,H,W,in) -> (B,H/stride,W/stride,depth); no final act."""

    depth: int
    stride: int
    se_reduction: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if x.shape[-1] == self.depth:
            shortcut = x[:, :: self.stride, :: self.stride]  # MaxPool2d(kernel 1, stride)
        else:
            shortcut = Conv2d(self.depth, kernel=1, stride=self.stride, name="shortcut_conv")(x)
            shortcut = BatchNorm(name="shortcut_bn")(shortcut, train)
        r = BatchNorm(name="bn1")(x, train)
        r = Conv2d(self.depth, name="conv1")(r)
        r = PReLU(name="prelu")(r)
        r = Conv2d(self.depth, stride=self.stride, name="conv2")(r)
        r = BatchNorm(name="bn2")(r, train)
        r = SqueezeExcite(self.se_reduction, name="se")(r)
        return r + shortcut


class GradualStyleBlock(nn.Module):
    """pSp ``GradualStyleBlock``: log2(spatial) x [conv3x3 s2 p1 + bias, lrelu 0.01] to 1x1, then EqualLinear.

    x: (B, spatial, spatial, C_in) -> (B, out_dim).
    """

    out_dim: int
    spatial: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for k in range(int(round(math.log2(self.spatial)))):
            x = Conv2d(self.out_dim, stride=2, use_bias=True, name=f"conv_{k}")(x)
            x = nn.leaky_relu(x, negative_slope=0.01)
        x = x.reshape(x.shape[0], self.out_dim)  # (B, 1, 1, D) -> (B, D)
        return EqualLinear(self.out_dim, name="linear")(x)


class EqualLinear(nn.Module):
    """rosinality ``EqualLinear`` (lr_mul 1, no activation): raw ``weight`` (in, out) ~ N(0,1), scaled at run time."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", nn.initializers.normal(1.0), (x.shape[-1], self.features))  # (in, out)
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        return ops.equal_linear(x, w, b, lr_mul=1.0)


class OffsetHead(nn.Module):
    """Beyond pSp: the encoder's spatial output. A feature map ``(B, r, r, C_in)`` -> an offset ``(B, r, r,
    channels)`` for the generator's ``r x r`` block (:class:`smis_jax.nets.stylegan2.Generator`'s ``offsets``):
    conv3x3 + bias, lrelu 0.2, then a conv3x3 + bias whose weights start at zero (``zero_kernel``, ``zero_bias``),
    so a fresh head adds nothing and training starts from pSp's encoder. It is the one-pass counterpart of
    ``--refine fs`` (the F of Barbershop's FS space, Zhu et al. 2021; a feature-space encoder as in Yao et al.
    2022's Feature-Style Encoder): W+ alone places regions poorly, a spatial latent places them where the mask
    says."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.leaky_relu(Conv2d(x.shape[-1], use_bias=True, name="conv_0")(x), negative_slope=0.2)
        w = self.param("zero_kernel", nn.initializers.zeros, (3, 3, x.shape[-1], self.channels))  # HWIO
        y = lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.param("zero_bias", nn.initializers.zeros, (self.channels,))


class GradualStyleEncoder(nn.Module):
    """One-hot labels ``(B, S, S, input_nc)`` (S = ``config.input_size``, pSp's 256) -> W+ codes
    ``(B, style_num, style_dim)`` (latent_avg not added); with an offset head (``config.offset_res``) ->
    ``(codes, offset (B, r, r, offset_channels))``.

    ``train=True`` uses batch statistics and, when called with ``mutable=['batch_stats']``, updates the running
    statistics exactly as PyTorch's train mode does. Intermediates c1, c2, c3, p2, p1 are sown into
    ``'intermediates'``.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        size = cfg.input_size
        want = (size, size, cfg.input_nc)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"GradualStyleEncoder expects (B, {size}, {size}, {cfg.input_nc}) one-hot "
                             f"labels, got shape {tuple(x.shape)}")
        x = Conv2d(cfg.widths[0], name="input_conv")(x)
        x = BatchNorm(name="input_bn")(x, train)
        x = PReLU(name="input_prelu")(x)

        t1, t2, t3 = cfg.taps
        for i, (_, depth, stride) in enumerate(cfg.unit_specs()):
            x = BottleneckIRSE(depth, stride, cfg.se_reduction, name=f"body_{i}")(x, train)
            if i == t1:
                c1 = x  # (B, 64, 64, widths[1])
            elif i == t2:
                c2 = x  # (B, 32, 32, widths[2])
            elif i == t3:
                c3 = x  # (B, 16, 16, widths[3])

        top = cfg.widths[3]
        p2 = ops.bilinear_align_corners(c3, c2.shape[1:3]) + Conv2d(top, 1, use_bias=True, name="latlayer1")(c2)
        p1 = ops.bilinear_align_corners(p2, c1.shape[1:3]) + Conv2d(top, 1, use_bias=True, name="latlayer2")(c1)
        for name, value in (("c1", c1), ("c2", c2), ("c3", c3), ("p2", p2), ("p1", p1)):
            self.sow("intermediates", name, value)

        codes = []
        for j in range(cfg.style_num):
            src = c3 if j < COARSE_END else p2 if j < MIDDLE_END else p1
            codes.append(GradualStyleBlock(cfg.style_dim, cfg.spatial_of(j), name=f"styles_{j}")(src))
        codes = jnp.stack(codes, axis=1)  # (B, S, D)
        if not cfg.offset_res:
            return codes
        src = {c3.shape[1]: c3, p2.shape[1]: p2, p1.shape[1]: p1}[cfg.offset_res]
        return codes, OffsetHead(cfg.offset_channels, name="offset_head")(src)


def codes_and_offsets(config: EncoderConfig, out) -> tuple[jax.Array, dict[int, jax.Array] | None]:
    """A :class:`GradualStyleEncoder`'s output as ``(codes, offsets)``: the generator's ``offsets`` ({offset_res:
    (B, r, r, C)}) from an offset head, None from pSp's encoder."""
    if not config.offset_res:
        return out, None
    codes, offset = out
    return codes, {config.offset_res: offset}


def reduce_onehot(onehot: jax.Array, size: int, sparse: bool = False) -> jax.Array:
    """One-hot masks (B, S, S, L) -> (B, size, size, L), S a multiple of ``size``: each f x f block (f = S / size)
    becomes its most frequent class (the lowest id on ties), so masks that were nearest-upsampled from ``size``
    (the built-in domains' 64 -> 256) come back exactly. ``sparse``: class 0 ("not annotated") wins a block only when
    no other class is in it, so thin scribbles survive. Identity when S == size."""
    b, s, _, n = onehot.shape
    if s == size:
        return onehot
    f = s // size
    counts = onehot.reshape(b, size, f, size, f, n).sum(axis=(2, 4))
    if sparse:
        counts = counts.at[..., 0].multiply(1.0 / (f * f + 1))  # any annotated pixel outweighs a full block of 0
    return jax.nn.one_hot(jnp.argmax(counts, axis=-1), n, dtype=onehot.dtype)


def _init_rule(name: str, shape: tuple[int, ...], siblings: Mapping[str, Any]) -> tuple[str, float]:
    """How PyTorch initialises one parameter of these layers: ``(kind, value)``, kind 'uniform' (+-value),
    'normal' (std value) or 'const'. Conv kernels (HWIO) and conv biases: U(+-1/sqrt(fan_in)); EqualLinear
    weights: N(0, 1); other biases 0; BatchNorm scale 1; PReLU alpha 0.25; the offset head's last conv 0 (ours)."""
    if name == "kernel":
        return "uniform", 1.0 / math.sqrt(math.prod(shape[:-1]))
    if name == "bias" and "kernel" in siblings:  # a Conv2d bias shares its kernel's fan-in
        return "uniform", 1.0 / math.sqrt(math.prod(siblings["kernel"].shape[:-1]))
    if name == "weight":
        return "normal", 1.0
    if name in ("bias", "scale", "alpha", "zero_kernel", "zero_bias"):
        return "const", {"bias": 0.0, "scale": 1.0, "alpha": 0.25}.get(name, 0.0)
    raise NotImplementedError(f"no initialisation rule for encoder parameter {name!r} {shape}: add it to _init_rule")


@functools.partial(jax.jit, static_argnames=("config",))
def init_variables(config: EncoderConfig, key: jax.Array) -> dict[str, Any]:
    """Fresh ``{'params', 'batch_stats'}`` with PyTorch's default initialisation (what the original trains from):
    the distributions of each layer's own initialiser (``_init_rule`` states them once more; a test holds the two
    equal), running mean 0 and variance 1.

    All uniform leaves are cut from one draw and all normal leaves from another. Flax's ``init`` draws one threefry
    per parameter, and on a 2-core CPU its first call took 18-27 s for the tiny encoder and 41-46 s for IR-SE50,
    against 3-4 s and 17-19 s (``bench/encoder_init.py``). The values differ from Flax's for the same key, as
    PyTorch's do anyway.
    """
    shapes = abstract_variables(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes["params"])

    def siblings(path):
        node = shapes["params"]
        for entry in path[:-1]:
            node = node[entry.key]
        return node

    rules = [_init_rule(path[-1].key, tuple(leaf.shape), siblings(path)) for path, leaf in flat]
    leaves = [leaf for _, leaf in flat]
    sizes = [math.prod(leaf.shape) for leaf in leaves]
    total = {kind: sum(n for n, (k, _) in zip(sizes, rules) if k == kind) for kind in ("uniform", "normal")}
    key_uniform, key_normal = jax.random.split(key)
    draws = {"uniform": jax.random.uniform(key_uniform, (total["uniform"],), jnp.float32, -1.0, 1.0),
             "normal": jax.random.normal(key_normal, (total["normal"],), jnp.float32)}
    offsets = {"uniform": 0, "normal": 0}
    params = []
    for leaf, n, (kind, value) in zip(leaves, sizes, rules):
        if kind == "const":
            params.append(jnp.full(leaf.shape, value, leaf.dtype))
            continue
        start = offsets[kind]
        offsets[kind] = start + n
        params.append((draws[kind][start:start + n] * value).reshape(leaf.shape).astype(leaf.dtype))
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.full(s.shape, 1.0 if path[-1].key == "var" else 0.0, s.dtype), shapes["batch_stats"])
    return {"params": jax.tree.unflatten(treedef, params), "batch_stats": batch_stats}


def abstract_variables(config: EncoderConfig) -> dict[str, Any]:
    """``{'params': ..., 'batch_stats': ...}`` as ShapeDtypeStructs (no compute, no random init)."""
    x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, config.input_nc), jnp.float32)
    return jax.eval_shape(lambda key: GradualStyleEncoder(config).init(key, x, False), jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _encode_fn(config: EncoderConfig, train: bool):
    """One jitted ``(params, batch_stats, x) -> codes`` (with an offset head ``(codes, offset)``) per (config,
    train); running stats are not updated."""
    model = GradualStyleEncoder(config)

    def encode(params, batch_stats, x):
        if train:
            codes, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, True, mutable=["batch_stats"])
            return codes
        return model.apply({"params": params, "batch_stats": batch_stats}, x, False)

    return jax.jit(encode)


@dataclass
class LoadedEncoder:
    """A converted encoder: ``config``, ``params``/``batch_stats`` (jax arrays), ``latent_avg`` (S, D) or None."""

    config: EncoderConfig
    params: Any
    batch_stats: Any
    latent_avg: jax.Array | None = None

    def encode(self, onehot: jax.Array, train: bool = False, sparse: bool = False) -> jax.Array:
        """onehot (B, S, S, input_nc) float -> codes (B, style_num, style_dim), before latent_avg.

        S is the encoder's ``input_size`` or any multiple of it (masks are read at 256: a 64-input encoder gets them
        reduced by :func:`reduce_onehot`, with ``sparse`` its rule for class 0). ``train=True`` uses batch
        statistics (the stored running statistics are left unchanged). An offset head's output is dropped
        (:meth:`encode_with_offsets` keeps it).
        """
        return self.encode_with_offsets(onehot, train, sparse)[0]

    def encode_with_offsets(self, onehot: jax.Array, train: bool = False,
                            sparse: bool = False) -> tuple[jax.Array, dict[int, jax.Array] | None]:
        """:meth:`encode` and the offset head's output as the generator's ``offsets`` ({offset_res: (B, r, r,
        C)}), or None for an encoder without one (pSp's)."""
        onehot = jnp.asarray(onehot, jnp.float32)
        size = self.config.input_size
        if (onehot.ndim != 4 or onehot.shape[1] != onehot.shape[2] or onehot.shape[1] % size
                or onehot.shape[3] != self.config.input_nc):
            raise ValueError(f"encode expects (B, {size}, {size}, {self.config.input_nc}) one-hot masks (or sides "
                             f"a multiple of {size}), got {tuple(onehot.shape)}")
        onehot = reduce_onehot(onehot, size, sparse)
        return codes_and_offsets(self.config, _encode_fn(self.config, bool(train))(self.params, self.batch_stats,
                                                                                   onehot))

    def wplus(self, onehot: jax.Array) -> jax.Array:
        """Eval-mode codes + latent_avg: the W+ the generator gets. (B, S, D)."""
        codes = self.encode(onehot)
        return codes if self.latent_avg is None else codes + self.latent_avg


class Pipeline(NamedTuple):
    """Everything mask-to-image synthesis needs from one pSp checkpoint."""

    encoder: LoadedEncoder
    generator: LoadedGenerator
    latent_avg: jax.Array  # (S, D)
    config: dict  # the converted config.json (kind 'psp')
