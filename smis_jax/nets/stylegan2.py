"""StyleGAN2 generator (rosinality ``stylegan2-pytorch`` semantics) as thin Flax Linen modules over ``ops``.

    g = load("stylegan2-ffhq-config-f.pt")            # or NVIDIA's .pkl, or a `python -m convert stylegan2` directory
    w = g.mapping(z)                                   # (B, D)
    w_plus = jnp.repeat(w[:, None], g.config.n_latent, axis=1)   # (B, L, D)
    image, features = g.synthesize(w_plus, key=key)    # (B, size, size, 3), (B, 64, 64, C)
    _, features = g.synthesize(w_plus, key=key, until_res=64)    # stops after the 64x64 block

Noise lists follow rosinality's layer order: entry 0 is the 4x4 conv, then two per resolution
(8, 8, 16, 16, ..., size, size); each entry is (B or 1, r, r, 1). ``features`` is the output of the second
styled conv of the 64x64 block (after noise and the fused leaky ReLU), the layer pseudo-labelling reads.

Parameters are a Linen variables dict ``{'params': ...}`` of *raw* weights (equal to the PyTorch ones after
layout transposes; see ``smis_jax/io/stylegan2.py`` for the table); equalised-lr scales are applied
at run time in ``ops``. rosinality's FIR buffers (``blur.kernel``, ``upsample.kernel``) are carried as
``blur_kernel`` / ``upsample_kernel`` leaves and used as stored, as PyTorch's ``load_state_dict`` makes the
original do (they are ``outer([1,3,3,1])/64*4`` in every trained checkpoint; the golden file randomises
them). Nothing here trains the generator; freeze those leaves if you ever do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smis_jax.errors import ConfigError
from smis_jax.nets import ops
from smis_jax.nets.trees import check_tree

__all__ = [
    "GeneratorConfig", "Generator", "LoadedGenerator", "Sample",  "make_noise", "truncate", "style_mix",
    "param_shapes", "init_params",
]

FEATURE_RES = 64  # the resolution whose second styled conv feeds pseudo-labelling


def _is_pow2(n: int) -> bool:
    return isinstance(n, (int, np.integer)) and n > 0 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a rosinality generator. Hashable (a static jit argument).

    ``channels``: per-resolution channel counts for every resolution 4, 8, ..., size, given as a mapping
    (JSON string keys are accepted) or as (res, ch) pairs; stored as a sorted tuple of (res, ch) pairs.
    ``None`` means rosinality's defaults with channel multiplier 2.

    ``conv_clamp``: None (rosinality, TF) or NVIDIA stylegan2-ada's clamp: every styled conv's output (after bias,
    leaky ReLU and gain) and every ToRGB output (after bias, before the skip is added) is clipped to
    ``[-conv_clamp, conv_clamp]``, as ADA's ``bias_act(..., clamp=conv_clamp)`` does.
    """

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channels: Any = None
    lr_mlp: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self):
        if not _is_pow2(self.size) or self.size < FEATURE_RES:
            raise ConfigError(f"GeneratorConfig: size must be a power of two >= {FEATURE_RES}, got {self.size!r}")
        if not isinstance(self.style_dim, (int, np.integer)) or self.style_dim < 1:
            raise ConfigError(f"GeneratorConfig: style_dim must be a positive int, got {self.style_dim!r}")
        if not isinstance(self.n_mlp, (int, np.integer)) or self.n_mlp < 1:
            raise ConfigError(f"GeneratorConfig: n_mlp must be a positive int, got {self.n_mlp!r}")
        if not float(self.lr_mlp) > 0:
            raise ConfigError(f"GeneratorConfig: lr_mlp must be > 0, got {self.lr_mlp!r}")
        channels = self.channels
        if channels is None:
            channels = _rosinality_channels(self.size, 2)
        pairs = channels.items() if isinstance(channels, Mapping) else channels
        try:
            table = {int(r): int(c) for r, c in pairs}
        except (TypeError, ValueError):
            raise ConfigError(f"GeneratorConfig: channels must map resolution -> count, got {channels!r}") from None
        want = [2**i for i in range(2, int(math.log2(self.size)) + 1)]
        if sorted(table) != want:
            raise ConfigError(
                f"GeneratorConfig: channels must give exactly the resolutions {want}, got {sorted(table)}")
        bad = [r for r, c in table.items() if c < 1]
        if bad:
            raise ConfigError(
                f"GeneratorConfig: channel count at resolution {bad[0]} must be >= 1, got {table[bad[0]]}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "style_dim", int(self.style_dim))
        object.__setattr__(self, "n_mlp", int(self.n_mlp))
        object.__setattr__(self, "lr_mlp", float(self.lr_mlp))
        if self.conv_clamp is not None:
            if not isinstance(self.conv_clamp, (int, float, np.number)) or not 0 < float(self.conv_clamp) < math.inf:
                raise ConfigError(
                    f"GeneratorConfig: conv_clamp must be None or a positive number, got {self.conv_clamp!r}")
            object.__setattr__(self, "conv_clamp", float(self.conv_clamp))
        object.__setattr__(self, "channels", tuple(sorted(table.items())))

    @classmethod
    def rosinality(cls, size: int, channel_multiplier: int = 2, style_dim: int = 512, n_mlp: int = 8,
                   lr_mlp: float = 0.01) -> "GeneratorConfig":
        """rosinality's ``Generator(size, style_dim, n_mlp, channel_multiplier)`` channel table."""
        if not _is_pow2(size) or size > 1024:
            raise ConfigError(f"GeneratorConfig.rosinality: size must be a power of two <= 1024, got {size!r}")
        return cls(size, style_dim, n_mlp, _rosinality_channels(size, channel_multiplier), lr_mlp)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """W+ layers: 2*log2(size) - 2 (18 at 1024)."""
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        """Styled convs = noise inputs: 2*log2(size) - 3 (17 at 1024)."""
        return 2 * self.log_size - 3

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(r for r, _ in self.channels)

    def channel(self, res: int) -> int:
        return dict(self.channels)[res]

    @property
    def feature_channels(self) -> int:
        """Channels of the 64x64 feature map."""
        return self.channel(FEATURE_RES)

    def num_noise_layers(self, until_res: int | None = None) -> int:
        """Noise inputs (= styled convs) computed when stopping after the ``until_res`` block."""
        return 2 * int(math.log2(self.check_until_res(until_res))) - 3

    def check_until_res(self, until_res: int | None) -> int:
        """``until_res`` (None = size) validated: a power of two in [64, size]."""
        if until_res is None:
            return self.size
        if not _is_pow2(until_res) or not FEATURE_RES <= until_res <= self.size:
            raise ConfigError(
                f"until_res must be None or a power of two in [{FEATURE_RES}, {self.size}], got {until_res!r}")
        return int(until_res)

    def to_json(self) -> dict:
        """JSON-ready dict (channels keyed by resolution strings; ``conv_clamp`` only when set)."""
        out = {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
               "channels": {str(r): c for r, c in self.channels}, "lr_mlp": self.lr_mlp}
        if self.conv_clamp is not None:
            out["conv_clamp"] = self.conv_clamp
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> "GeneratorConfig":
        """Inverse of :meth:`to_json`; accepts a dict or a JSON string; other keys (``kind``, ...) are ignored."""
        if isinstance(data, str):
            data = json.loads(data)
        missing = [k for k in ("size", "channels") if k not in data]
        if missing:
            raise ConfigError(f"GeneratorConfig.from_json: missing '{missing[0]}'")
        kw = {k: data[k] for k in ("size", "style_dim", "n_mlp", "channels", "lr_mlp", "conv_clamp") if k in data}
        return cls(**kw)


def _rosinality_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in table.items() if r <= size}


# ---------------------------------------------------------------------------------------------------------------
# Modules. Initialisers follow rosinality (randn weights, randn/lr_mul mapping weights, modulation bias 1,
# zero noise strengths and biases) so a fresh init behaves like an untrained PyTorch one.

def _normal(scale: float = 1.0):
    return lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype) * scale


def _fir_init(key, shape, dtype=jnp.float32):
    # rosinality's Blur/Upsample buffer for blur_kernel [1,3,3,1] and upsample factor 2.
    return jnp.asarray(ops.make_kernel() * 4, dtype).reshape(shape)


class EqualLinear(nn.Module):
    """Params ``kernel`` (in, out) raw and ``bias`` (out,)."""

    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    activation: str | None = None

    @nn.compact
    def __call__(self, x):  # (..., in) -> (..., out)
        kernel = self.param("kernel", _normal(1.0 / self.lr_mul), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,), jnp.float32)
        return ops.equal_linear(x, kernel, bias, self.lr_mul, self.activation)


class MappingNetwork(nn.Module):
    """PixelNorm then ``n_mlp`` EqualLinear(lr_mul) + fused lrelu; params ``dense_0 .. dense_{n_mlp-1}``."""

    style_dim: int
    n_mlp: int
    lr_mul: float

    @nn.compact
    def __call__(self, z):  # (B, D) -> (B, D)
        x = ops.pixel_norm(z)
        for i in range(self.n_mlp):
            x = EqualLinear(self.style_dim, self.lr_mul, activation="fused_lrelu", name=f"dense_{i}")(x)
        return x


class ModulatedConv(nn.Module):
    """Params ``weight`` (k, k, I, O) raw, ``modulation`` (EqualLinear D -> I, bias init 1) and, when
    upsampling, ``blur_kernel`` (4, 4) (rosinality's buffer, gain 4 included)."""

    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    grouped: bool = False

    @nn.compact
    def __call__(self, x, w):  # x (B, H, W, I), w (B, D) -> (B, H', W', O)
        in_ch = x.shape[-1]
        k = self.kernel_size
        weight = self.param("weight", _normal(), (k, k, in_ch, self.features), jnp.float32)
        styles = EqualLinear(in_ch, bias_init=1.0, name="modulation")(w)  # (B, I)
        blur_kernel = self.param("blur_kernel", _fir_init, (4, 4), jnp.float32) if self.upsample else None
        return ops.modulated_conv2d(x, weight, styles, self.demodulate, self.upsample, grouped=self.grouped,
                                    blur_kernel=blur_kernel)


def _clamp(x, conv_clamp: float | None):
    return x if conv_clamp is None else jnp.clip(x, -conv_clamp, conv_clamp)


class StyledConv(nn.Module):
    """ModulatedConv -> ``+ noise_weight * noise`` -> fused lrelu with ``activate_bias`` (O,) -> clip to
    ``conv_clamp`` when set."""

    features: int
    upsample: bool = False
    grouped: bool = False
    conv_clamp: float | None = None

    @nn.compact
    def __call__(self, x, w, noise):  # x (B, H, W, I), w (B, D), noise (B|1, H', W', 1)
        x = ModulatedConv(self.features, 3, True, self.upsample, self.grouped, name="conv")(x, w)
        strength = self.param("noise_weight", nn.initializers.zeros, (1,), jnp.float32)
        x = x + strength * noise
        bias = self.param("activate_bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return _clamp(ops.fused_leaky_relu(x, bias), self.conv_clamp)


class ToRGB(nn.Module):
    """1x1 ModulatedConv without demodulation, ``+ bias`` (3,), clip to ``conv_clamp`` when set, ``+
    upsample(skip)`` with ``upsample_kernel`` (4, 4) (only when there is a skip input, i.e. not in ``to_rgb1``)."""

    upsample: bool = True
    grouped: bool = False
    conv_clamp: float | None = None

    @nn.compact
    def __call__(self, x, w, skip=None):  # x (B, H, W, C), skip (B, H/2, W/2, 3) -> (B, H, W, 3)
        out = ModulatedConv(3, 1, demodulate=False, grouped=self.grouped, name="conv")(x, w)
        out = _clamp(out + self.param("bias", nn.initializers.zeros, (3,), jnp.float32), self.conv_clamp)
        if self.upsample:  # every ToRGB but the first adds the upsampled RGB of the previous block
            out = out + ops.upsample(skip, self.param("upsample_kernel", _fir_init, (4, 4), jnp.float32))
        return out


class Generator(nn.Module):
    """rosinality ``Generator``. ``mapping(z)`` -> w; ``__call__(w_plus, noise, until_res)`` -> (image, features).

    Parameter tree (``{'params': ...}``): ``style/dense_i``, ``input`` (1, 4, 4, C4), ``conv1``, ``to_rgb1``,
    ``convs_{j}`` (even j upsample), ``to_rgbs_{k}``; the same indices as rosinality's state dict.
    ``grouped=True`` selects the per-sample-weight modulated conv (slower; for cross-checks).
    """

    config: GeneratorConfig
    grouped: bool = False

    def setup(self):
        c = self.config
        self.style = MappingNetwork(c.style_dim, c.n_mlp, c.lr_mlp)
        self.input = self.param("input", _normal(), (1, 4, 4, c.channel(4)), jnp.float32)
        clamp = c.conv_clamp
        self.conv1 = StyledConv(c.channel(4), grouped=self.grouped, conv_clamp=clamp)
        self.to_rgb1 = ToRGB(upsample=False, grouped=self.grouped, conv_clamp=clamp)
        convs, to_rgbs = [], []
        for res in c.resolutions[1:]:
            convs.append(StyledConv(c.channel(res), upsample=True, grouped=self.grouped, conv_clamp=clamp))
            convs.append(StyledConv(c.channel(res), grouped=self.grouped, conv_clamp=clamp))
            to_rgbs.append(ToRGB(grouped=self.grouped, conv_clamp=clamp))
        self.convs = convs
        self.to_rgbs = to_rgbs

    def mapping(self, z):
        """z (B, D) -> w (B, D)."""
        return self.style(z)

    def init_all(self, w_plus, noise):
        """Touches every layer (mapping included), so ``init``/``eval_shape`` with it give the full tree."""
        self.mapping(w_plus[:, 0])
        return self(w_plus, noise)

    def __call__(self, w_plus, noise: Sequence[jax.Array], until_res: int | None = None,
                 offsets: dict[int, jax.Array] | None = None):
        """w_plus (B, n_latent, D); noise: list of (B|1, r, r, 1) in rosinality order (entries for layers
        above ``until_res`` may be absent). ``offsets``: {res: (B|1, res, res, C_res)} added to that block's output
        (after its second conv, before its ToRGB; res 4 after ``conv1``): the spatial latent of
        :mod:`smis_jax.refine`'s ``fs`` method; None (the original generator) adds nothing. Returns (image (B,
        size, size, 3) or None when ``until_res < size``, features (B, 64, 64, C))."""
        c = self.config
        until = c.check_until_res(until_res)
        batch = w_plus.shape[0]
        if w_plus.ndim != 3 or w_plus.shape[1:] != (c.n_latent, c.style_dim):
            raise ValueError(f"w_plus must be (B, {c.n_latent}, {c.style_dim}), got {tuple(w_plus.shape)}")
        _check_noise(c, noise, until, batch)
        offsets = _check_offsets(c, offsets, until, batch)
        want_image = until == c.size

        x = jnp.broadcast_to(self.input, (batch, *self.input.shape[1:]))  # (B, 4, 4, C4)
        x = self.conv1(x, w_plus[:, 0], noise[0])
        if 4 in offsets:
            x = x + offsets[4]
        skip = self.to_rgb1(x, w_plus[:, 1]) if want_image else None
        features = None
        for k, res in enumerate(c.resolutions[1:]):
            if res > until:
                break
            i = 1 + 2 * k
            x = self.convs[2 * k](x, w_plus[:, i], noise[i])
            x = self.convs[2 * k + 1](x, w_plus[:, i + 1], noise[i + 1])
            if res in offsets:
                x = x + offsets[res]
            # Every block's output is sown into the 'taps' collection (only kept when a caller asks for it with
            # ``mutable=['taps']``: multi-scale labellers read the 16x16 and 32x32 blocks beside the 64x64 one).
            if not self.is_initializing():  # init would make the taps part of the variables it returns
                self.sow("taps", f"res{res}", x)
            if res == FEATURE_RES:
                features = x
            if want_image:
                # ToRGB of block k shares its latent index with block k+1's first conv.
                skip = self.to_rgbs[k](x, w_plus[:, i + 2], skip)
        return skip, features


def _check_offsets(config: GeneratorConfig, offsets, until: int, batch: int) -> dict:
    if offsets is None:
        return {}
    if not isinstance(offsets, dict):
        raise ValueError(f"offsets must be None or a dict {{resolution: (B, r, r, C)}}, got {type(offsets).__name__}")
    for res, off in offsets.items():
        if res not in config.resolutions or res > until:
            raise ValueError(f"offsets: resolution {res!r} is not a block computed here "
                             f"({', '.join(str(r) for r in config.resolutions if r <= until)})")
        want = (res, res, config.channel(res))
        shape = tuple(np.shape(off))
        if len(shape) != 4 or shape[1:] != want or shape[0] not in (1, batch):
            raise ValueError(f"offsets[{res}] must be ({batch} or 1, {res}, {res}, {want[2]}), got {shape}")
    return offsets


def _check_noise(config: GeneratorConfig, noise, until: int, batch: int) -> None:
    needed = config.num_noise_layers(until)
    if not isinstance(noise, (list, tuple)) or len(noise) < needed:
        got = len(noise) if isinstance(noise, (list, tuple)) else type(noise).__name__
        raise ValueError(f"noise must be a list of at least {needed} arrays (rosinality layer order), got {got}")
    for i in range(needed):
        r = 2 ** ((i + 5) // 2)
        shape = tuple(np.shape(noise[i]))
        if len(shape) != 4 or shape[1:] != (r, r, 1) or shape[0] not in (1, batch):
            raise ValueError(f"noise[{i}] must be ({batch} or 1, {r}, {r}, 1), got {shape}")


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers.

def make_noise(config: GeneratorConfig, key: jax.Array, batch: int, until_res: int | None = None) -> list[jax.Array]:
    """Fresh N(0, 1) noise for every layer computed up to ``until_res``: list of (batch, r, r, 1).

    One draw covers all layers up to 64x64 and one more each higher resolution (``fold_in(key, chunk)``), so
    stopping early draws exactly the noise the full forward uses for those layers, wastes nothing, and
    compiles a handful of threefry calls instead of one per layer (which dominated compile time on CPU).
    """
    n = config.num_noise_layers(until_res)
    sizes = [2 ** ((i + 5) // 2) for i in range(n)]
    chunks = [[i for i in range(n) if sizes[i] <= FEATURE_RES]]
    chunks += [[i for i in range(n) if sizes[i] == r] for r in config.resolutions if r > FEATURE_RES]
    noise: list[jax.Array] = []
    for c, layers in enumerate(chunk for chunk in chunks if chunk):
        flat = jax.random.normal(jax.random.fold_in(key, c), (batch, sum(sizes[i] ** 2 for i in layers)))
        offset = 0
        for i in layers:
            noise.append(flat[:, offset:offset + sizes[i] ** 2].reshape(batch, sizes[i], sizes[i], 1))
            offset += sizes[i] ** 2
    return noise


def make_sample_noise(config: GeneratorConfig, keys: jax.Array, until_res: int | None = None) -> list[jax.Array]:
    """Like :func:`make_noise`, but sample b's noise comes from its own key ``keys[b]``: list of (B, r, r, 1).

    A sample's noise then does not depend on the batch it is computed in (batched inversion equals separate
    runs; synthesis results do not depend on the batch size).
    """
    per_sample = jax.vmap(lambda k: make_noise(config, k, 1, until_res))(keys)  # each (B, 1, r, r, 1)
    return [n[:, 0] for n in per_sample]


def truncate(w: jax.Array, latent_avg: jax.Array, psi: float) -> jax.Array:
    """``latent_avg + psi * (w - latent_avg)``.  w (..., D), latent_avg (D,) or broadcastable."""
    return latent_avg + psi * (w - latent_avg)


def style_mix(w1: jax.Array, w2: jax.Array, inject_index, n_latent: int) -> jax.Array:
    """W+ (B, n_latent, D) taking w1 (B, D) for layers < inject_index and w2 (B, D) from there on.

    ``inject_index`` may be a traced integer (random mixing inside jit)."""
    if isinstance(inject_index, (int, np.integer)) and not 0 <= inject_index <= n_latent:
        raise ValueError(f"inject_index must be in [0, {n_latent}], got {inject_index}")
    first = (jnp.arange(n_latent) < inject_index)[None, :, None]  # (1, L, 1)
    return jnp.where(first, w1[:, None, :], w2[:, None, :])


def _dummy_inputs(config: GeneratorConfig, batch: int = 1):
    w_plus = jax.ShapeDtypeStruct((batch, config.n_latent, config.style_dim), jnp.float32)
    noise = [jax.ShapeDtypeStruct((1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1), jnp.float32)
             for i in range(config.num_layers)]
    return w_plus, noise


def param_shapes(config: GeneratorConfig) -> Any:
    """Abstract variables tree ``{'params': ...}`` (ShapeDtypeStructs) of ``Generator(config)``; no compute."""
    w_plus, noise = _dummy_inputs(config)
    return jax.eval_shape(partial(Generator(config).init, method=Generator.init_all), jax.random.key(0), w_plus, noise)


@partial(jax.jit, static_argnums=(0,))
def init_params(config: GeneratorConfig, key: jax.Array) -> Any:
    """Randomly initialised variables ``{'params': ...}`` with rosinality's initialisers (the modules' own).

    Built from one normal draw over all leaves rather than ``Generator.init`` under jit, whose one threefry
    per parameter takes minutes to compile on a CPU; and jitted, as cutting the leaves op by op would compile
    a kernel per shape.
    """
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
    flat = jax.random.normal(key, (sum(sizes),))
    out, offset = [], 0
    for (path, leaf), n in zip(leaves, sizes):
        names = [getattr(p, "key", "") for p in path]
        out.append(_init_leaf(names, leaf.shape, flat[offset:offset + n].reshape(leaf.shape), config))
        offset += n
    return jax.tree_util.tree_unflatten(treedef, out)


def _init_leaf(names: list[str], shape, normal: jax.Array, config: GeneratorConfig) -> jax.Array:
    """The modules' initialisers, applied to a slice of one shared normal draw."""
    name = names[-1]
    if name in ("blur_kernel", "upsample_kernel"):
        return _fir_init(None, shape)
    if name in ("weight", "input"):
        return normal
    if name == "kernel":
        return normal / config.lr_mlp if names[1] == "style" else normal
    if name == "bias" and names[-2] == "modulation":
        return jnp.ones(shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)  # biases, noise strengths


# ---------------------------------------------------------------------------------------------------------------
# Loaded generator: jitted once at module level; the config is static, the params are arguments.

@partial(jax.jit, static_argnames=("config",))
def _mapping_fn(config, params, z):
    return Generator(config).apply(params, z, method=Generator.mapping)


@partial(jax.jit, static_argnames=("config", "until_res"))
def _synthesize_fn(config, params, w_plus, noise, until_res):
    return Generator(config).apply(params, w_plus, noise, until_res)


@partial(jax.jit, static_argnames=("config", "until_res"))
def _synthesize_random_fn(config, params, w_plus, key, until_res):
    noise = make_noise(config, key, w_plus.shape[0], until_res)
    return Generator(config).apply(params, w_plus, noise, until_res)


@partial(jax.jit, static_argnames=("config", "batch", "until_res"))
def _sample_fn(config, params, key, trunc_latent, psi, batch, until_res):
    key_z, key_noise = jax.random.split(key)
    w = Generator(config).apply(params, jax.random.normal(key_z, (batch, config.style_dim)), method=Generator.mapping)
    if trunc_latent is not None:
        w = truncate(w, trunc_latent, psi)
    w_plus = jnp.broadcast_to(w[:, None, :], (batch, config.n_latent, config.style_dim))
    noise = make_noise(config, key_noise, batch, until_res)
    image, features = Generator(config).apply(params, w_plus, noise, until_res)
    return image, features, w_plus


@partial(jax.jit, static_argnames=("config", "n"))
def _mean_latent_fn(config, params, key, n):
    z = jax.random.normal(key, (n, config.style_dim))
    return jnp.mean(Generator(config).apply(params, z, method=Generator.mapping), axis=0)


class Sample(NamedTuple):
    image: jax.Array | None  # (B, size, size, 3), None when until_res < size
    features: jax.Array  # (B, 64, 64, C)
    w_plus: jax.Array  # (B, n_latent, D): the codes that made them


class LoadedGenerator:
    """A generator with its weights: ``config``, ``params`` ({'params': ...}), ``noises`` (list of
    (1, r, r, 1) stored buffers), ``latent_avg`` ((D,) or None)."""

    def __init__(self, config: GeneratorConfig, params: Any, noises: Sequence[Any], latent_avg: Any = None):
        check_tree(param_shapes(config), params, "stylegan2 params")
        if len(noises) != config.num_layers:
            raise ValueError(f"stylegan2: expected {config.num_layers} noise buffers, got {len(noises)}")
        for i, n in enumerate(noises):
            r = 2 ** ((i + 5) // 2)
            if tuple(np.shape(n)) != (1, r, r, 1):
                raise ValueError(
                    f"stylegan2: noise buffer {i} has shape {tuple(np.shape(n))}, expected (1, {r}, {r}, 1)")
        if latent_avg is not None and tuple(np.shape(latent_avg)) != (config.style_dim,):
            raise ValueError(
                f"stylegan2: latent_avg has shape {tuple(np.shape(latent_avg))}, expected ({config.style_dim},)")
        self.config = config
        self.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
        self.noises = [jnp.asarray(n, jnp.float32) for n in noises]
        self.latent_avg = None if latent_avg is None else jnp.asarray(latent_avg, jnp.float32)
        self._mean_latent_cache: jax.Array | None = None

    def __repr__(self):
        c = self.config
        clamp = "" if c.conv_clamp is None else f", conv_clamp={c.conv_clamp:g}"
        return (f"LoadedGenerator(size={c.size}, style_dim={c.style_dim}, n_mlp={c.n_mlp}, "
                f"channels={dict(c.channels)}{clamp}, latent_avg={'yes' if self.latent_avg is not None else 'no'})")

    @property
    def module(self) -> Generator:
        return Generator(self.config)

    def mapping(self, z: jax.Array) -> jax.Array:
        """z (B, D) -> w (B, D)."""
        if np.ndim(z) != 2 or np.shape(z)[1] != self.config.style_dim:
            raise ValueError(f"z must be (B, {self.config.style_dim}), got {tuple(np.shape(z))}")
        return _mapping_fn(self.config, self.params, z)

    def synthesize(self, w_plus: jax.Array, noise: Sequence[jax.Array] | str | None = None,
                   key: jax.Array | None = None, until_res: int | None = None):
        """w_plus (B, n_latent, D) -> (image (B, size, size, 3) or None if until_res < size, features (B, 64, 64, C)).

        noise: a list in rosinality order; ``"const"`` for the stored buffers; None with ``key`` for fresh
        N(0, 1) noise drawn from the key, None without a key for the stored buffers.
        """
        until_res = self.config.check_until_res(until_res)
        if key is not None:
            if noise is not None:
                raise ValueError("pass either noise or key, not both")
            return _synthesize_random_fn(self.config, self.params, w_plus, key, until_res)
        if isinstance(noise, str) and noise != "const":
            raise ValueError(f"noise must be a list, 'const' or None, got {noise!r}")
        if noise is None or isinstance(noise, str):
            noise = self.noises
        return _synthesize_fn(self.config, self.params, w_plus, list(noise), until_res)

    def truncation_latent(self) -> jax.Array:
        """``latent_avg``, or (once, cached) ``mean_latent(PRNGKey(0), 4096)`` when the checkpoint has none."""
        if self.latent_avg is not None:
            return self.latent_avg
        if self._mean_latent_cache is None:
            self._mean_latent_cache = self.mean_latent(jax.random.key(0))
        return self._mean_latent_cache

    def sample(self, key: jax.Array, batch: int, truncation: float = 1.0, until_res: int | None = None) -> Sample:
        """z ~ N(0, I) -> w (truncated towards :meth:`truncation_latent` if ``truncation != 1``) -> W+ -> image
        and features with fresh noise; all from ``key``."""
        until_res = self.config.check_until_res(until_res)
        latent = None if truncation == 1.0 else self.truncation_latent()
        psi = jnp.float32(truncation)
        return Sample(*_sample_fn(self.config, self.params, key, latent, psi, int(batch), until_res))

    def mean_latent(self, key: jax.Array, n: int = 4096) -> jax.Array:
        """rosinality ``mean_latent``: the mean of ``mapping(randn(n, D))``, (D,)."""
        return _mean_latent_fn(self.config, self.params, key, int(n))
