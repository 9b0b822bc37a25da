"""Training a StyleGAN2 in JAX: rosinality's discriminator, the paper's losses, one jitted data-parallel step.

The generator is the project's own :class:`smis_jax.nets.stylegan2.Generator` (the tree users load); the discriminator is
rosinality's ``Discriminator`` (1x1 FromRGB, residual blocks with blurred stride-2 convs, minibatch stddev, two
equalised linear layers). Losses follow NVlabs' stylegan2-ada-pytorch ``training/loss.py``:

* D: non-saturating logistic, ``softplus(D(fake)) + softplus(-D(real))``;
* lazy R1 every ``r1_every`` steps as its own D update: ``r1_gamma / 2 * |grad_x D(x)|^2 * r1_every``, with Adam's
  learning rate and betas scaled by ``r1_every / (r1_every + 1)`` (the paper's lazy-regularisation correction);
* G: ``softplus(-D(G(z)))`` with style mixing (probability ``mixing``, a random crossover layer);
* EMA generator with ADA's ramp-up: half-life ``min(ema_kimg, cur_kimg * ema_rampup)`` thousand images.

Path-length regularisation is left out: on the built-in 64 px domain it would cost a second generator backward
every fourth step for a smoother W space the few-shot method does not need; ``pl`` is therefore not a setting.
Adam(b1 = 0, b2 = 0.99) on both networks; the FIR kernels stored as generator leaves are frozen.

Randomness of step ``s`` is ``fold_in(seed_key, s)``, and the real batch of step ``s`` is a pure function of ``s``,
so a resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smis_jax.errors import ConfigError
from smis_jax.nets import ops
from smis_jax.nets.stylegan2 import Generator, GeneratorConfig, init_params, make_noise, style_mix

__all__ = ["GanConfig", "Discriminator", "GanState", "init_state", "make_train_step", "ema_beta", "sample_images",
           "DEFAULT_CHANNELS"]

DEFAULT_CHANNELS = {4: 128, 8: 128, 16: 128, 32: 64, 64: 64}


@dataclass(frozen=True)
class GanConfig:
    """Everything a GAN run needs besides paths; frozen, hashable (keys the compiled step), JSON round-trips."""

    size: int = 64
    style_dim: int = 128
    n_mlp: int = 4
    channels: Any = tuple(sorted(DEFAULT_CHANNELS.items()))  # generator, per resolution
    d_channels: Any = tuple(sorted(DEFAULT_CHANNELS.items()))  # discriminator, per resolution
    batch_size: int = 32
    lr: float = 0.002
    # The discriminator's learning rate is lr * d_lr_mult (a two-time-scale rule, Heusel et al. 2017). Measured
    # here (issue 26): at 1.0 a fresh D that had learnt to tell the shipped generator's samples apart (logits
    # +-1) fell back to chance within 100-200 steps once G trained, so G got no signal.
    d_lr_mult: float = 1.0
    # rosinality's default. ADA's heuristic (0.0002 * size^2 / batch, ~0.05 at 64 px) suits its far wider
    # networks; with these small ones a weak R1 lets D run away and G collapse to one layout (measured: README,
    # "The built-in domain").
    r1_gamma: float = 10.0
    r1_every: int = 16
    mixing: float = 0.9
    ema_kimg: float = 5.0
    ema_rampup: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("channels", "d_channels"):
            value = getattr(self, name)
            pairs = value.items() if isinstance(value, Mapping) else value
            object.__setattr__(self, name, tuple(sorted((int(r), int(c)) for r, c in pairs)))
        self.generator  # validates size / style_dim / channels
        want = [r for r, _ in self.channels]
        if [r for r, _ in self.d_channels] != want:
            raise ConfigError(f"GanConfig: d_channels must give the resolutions {want}, got "
                             f"{[r for r, _ in self.d_channels]}")
        problems = [f"{n} must be > 0, got {getattr(self, n)}" for n in ("batch_size", "lr", "d_lr_mult", "r1_every",
                                                                   "ema_kimg")
                    if not getattr(self, n) > 0]
        if self.r1_gamma < 0:
            problems.append(f"r1_gamma must be >= 0, got {self.r1_gamma}")
        if not 0 <= self.mixing <= 1:
            problems.append(f"mixing must lie in [0, 1], got {self.mixing}")
        if problems:
            raise ConfigError("GanConfig: " + "; ".join(problems))

    @property
    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(self.size, self.style_dim, self.n_mlp, self.channels)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = {str(r): c for r, c in self.channels}
        d["d_channels"] = {str(r): c for r, c in self.d_channels}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"GanConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "GanConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------------------
# Discriminator (rosinality layout: convs_0 = FromRGB, convs_{i} ResBlocks, final_conv, final_linear_{0,1})

def _normal(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)


class ConvLayer(nn.Module):
    """rosinality ``ConvLayer``: [blur + stride-2] equalised conv, then fused lrelu (bias inside) or a plain bias."""

    features: int
    kernel_size: int
    downsample: bool = False
    activate: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):  # (B, H, W, I) -> (B, H or H/2, W or W/2, O)
        k, in_ch = self.kernel_size, x.shape[-1]
        weight = self.param("weight", _normal, (k, k, in_ch, self.features))
        if self.downsample:
            p = 4 - 2 + (k - 1)  # len(blur kernel) - factor + kernel_size - 1
            x = ops.blur(x, ((p + 1) // 2, p // 2))
            stride, pad = 2, 0
        else:
            stride, pad = 1, k // 2
        x = ops.conv(x, weight / math.sqrt(in_ch * k * k), stride, [(pad, pad)] * 2)
        if self.activate:
            bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
            return ops.fused_leaky_relu(x, bias)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (self.features,))
        return x


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):  # (B, H, W, I) -> (B, H/2, W/2, O)
        out = ConvLayer(x.shape[-1], 3, name="conv1")(x)
        out = ConvLayer(self.features, 3, downsample=True, name="conv2")(out)
        skip = ConvLayer(self.features, 1, downsample=True, activate=False, use_bias=False, name="skip")(x)
        return (out + skip) / math.sqrt(2)


def minibatch_stddev(x, group_size: int = 4):
    """rosinality's stddev feature: per group of ``min(B, group_size)`` samples (sample b in group b % (B/G)),
    the mean over (H, W, C) of the per-position std, appended as one channel.  (B, H, W, C) -> (B, H, W, C+1)."""
    b, h, w, c = x.shape
    g = min(b, group_size)
    if b % g:
        raise ValueError(f"minibatch stddev: batch {b} is not divisible by its group size {g}")
    y = x.reshape(g, b // g, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # (B/G, H, W, C)
    stat = jnp.mean(std, axis=(1, 2, 3))  # (B/G,)
    stat = jnp.tile(stat, g)  # (B,) sample b reads group member b % (B/G)
    return jnp.concatenate([x, jnp.broadcast_to(stat[:, None, None, None], (b, h, w, 1))], axis=-1)


class Discriminator(nn.Module):
    """rosinality ``Discriminator`` for ``channels`` ((res, ch) pairs from 4 to size): images (B, S, S, 3) -> (B,)."""

    channels: tuple

    @nn.compact
    def __call__(self, images):
        table = dict(self.channels)
        size = max(table)
        x = ConvLayer(table[size], 1, name="convs_0")(images)
        res, i = size, 1
        while res > 4:
            x = ResBlock(table[res // 2], name=f"convs_{i}")(x)
            res, i = res // 2, i + 1
        x = minibatch_stddev(x)
        x = ConvLayer(table[4], 3, name="final_conv")(x)
        x = x.reshape(x.shape[0], -1)
        x = _EqualDense(table[4], "fused_lrelu", name="final_linear_0")(x)
        return _EqualDense(1, None, name="final_linear_1")(x)[:, 0]


class _EqualDense(nn.Module):
    features: int
    activation: str | None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _normal, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return ops.equal_linear(x, kernel, bias, 1.0, self.activation)


# ---------------------------------------------------------------------------------------------------------------
# State, optimisers, steps

@flax.struct.dataclass
class GanState:
    step: jax.Array  # () int32: steps done
    g_params: Any
    d_params: Any
    g_ema: Any
    g_opt: Any
    d_opt: Any
    key: jax.Array  # raw key data of the run's seed


def _frozen(params):
    """True on the generator's stored FIR kernels (never trained)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", "") in ("blur_kernel", "upsample_kernel"), params)


def g_optimizer(cfg: GanConfig) -> optax.GradientTransformation:
    adam = optax.adam(cfg.lr, b1=0.0, b2=0.99, eps=1e-8)
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()},
                                 lambda p: jax.tree.map(lambda f: "frozen" if f else "train", _frozen(p)))


def d_optimizer(cfg: GanConfig) -> optax.GradientTransformation:
    c = cfg.r1_every / (cfg.r1_every + 1)  # lazy regularisation: the paper's lr / beta correction
    return optax.adam(cfg.lr * cfg.d_lr_mult * c, b1=0.0, b2=0.99 ** c, eps=1e-8)


@partial(jax.jit, static_argnames=("cfg",))
def _init(cfg: GanConfig, key):
    k_g, k_d, k_run = jax.random.split(key, 3)
    g_params = init_params(cfg.generator, k_g)
    d_params = Discriminator(cfg.d_channels).init(k_d, jnp.zeros((1, cfg.size, cfg.size, 3)))
    return GanState(jnp.zeros((), jnp.int32), g_params, d_params, g_params, g_optimizer(cfg).init(g_params),
                    d_optimizer(cfg).init(d_params), jax.random.key_data(k_run))


def init_state(cfg: GanConfig) -> GanState:
    """Fresh G (rosinality's initialisers), D (N(0, 1) raw weights, zero biases), EMA = G, Adam states."""
    return _init(cfg, jax.random.key(cfg.seed))


def ema_beta(cfg: GanConfig, step) -> jax.Array:
    """ADA's EMA coefficient after ``step`` steps: ``0.5 ** (batch / ema_nimg)``, ema_nimg ramped up."""
    cur_nimg = (step + 1) * cfg.batch_size
    ema_nimg = jnp.minimum(cfg.ema_kimg * 1000.0, cur_nimg * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / jnp.maximum(ema_nimg, 1e-8))


def _latents(cfg: GanConfig, g_params, key, batch: int):
    """W+ (B, L, D) for a batch, style-mixed with probability ``cfg.mixing`` (rosinality's ``mixing_noise``)."""
    g = cfg.generator
    k1, k2, k_mix, k_idx = jax.random.split(key, 4)
    gen = Generator(g)
    w1 = gen.apply(g_params, jax.random.normal(k1, (batch, g.style_dim)), method=Generator.mapping)
    w2 = gen.apply(g_params, jax.random.normal(k2, (batch, g.style_dim)), method=Generator.mapping)
    mix = jax.random.uniform(k_mix) < cfg.mixing
    inject = jnp.where(mix, jax.random.randint(k_idx, (), 1, g.n_latent), g.n_latent)
    return style_mix(w1, w2, inject, g.n_latent)


def _fake(cfg: GanConfig, g_params, key, batch: int, shard):
    k_w, k_n = jax.random.split(key)
    w_plus = shard(_latents(cfg, g_params, k_w, batch))
    noise = [shard(n) for n in make_noise(cfg.generator, k_n, batch)]
    image, _ = Generator(cfg.generator).apply(g_params, w_plus, noise)
    return image


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: GanConfig, mesh: Mesh):
    """``step(state, reals (B, S, S, 3), do_r1, train_g=True) -> (state, metrics)``: one D update, [one R1 D
    update,] [one G update and the EMA], jitted once per combination of the static flags ``do_r1`` and ``train_g``
    (a plain and an R1 program in a normal run), state donated, the batch sharded over ``mesh``'s data axis.
    ``train_g=False`` is a discriminator warm-up step (a run that starts from a trained generator and a fresh
    discriminator). ``step.lower(...)`` lowers the same program (for XLA's cost analysis)."""
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {n_dev} devices of the mesh")
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    g_tx, d_tx = g_optimizer(cfg), d_optimizer(cfg)
    disc = Discriminator(cfg.d_channels)
    b = cfg.batch_size

    def shard(x):
        return jax.lax.with_sharding_constraint(x, batched)

    def step(state: GanState, reals, do_r1, train_g):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        k_d, k_g = jax.random.split(key)
        reals = shard(reals)
        fake = jax.lax.stop_gradient(_fake(cfg, state.g_params, k_d, b, shard))

        def d_loss(d_params):
            real_logits, fake_logits = disc.apply(d_params, reals), disc.apply(d_params, fake)
            loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
            return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

        (loss_d, (real_score, fake_score)), grads = jax.value_and_grad(d_loss, has_aux=True)(state.d_params)
        updates, d_opt = d_tx.update(grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        metrics = {"loss_d": loss_d, "real_score": real_score, "fake_score": fake_score}

        def r1_update(d_params, d_opt):
            def r1_loss(d_params):
                grad_x = jax.grad(lambda x: jnp.sum(disc.apply(d_params, x)))(reals)
                penalty = jnp.mean(jnp.sum(grad_x ** 2, axis=(1, 2, 3)))
                return cfg.r1_gamma / 2 * penalty * cfg.r1_every, penalty

            (_, penalty), grads = jax.value_and_grad(r1_loss, has_aux=True)(d_params)
            updates, d_opt = d_tx.update(grads, d_opt, d_params)
            return optax.apply_updates(d_params, updates), d_opt, penalty

        # One program per kind of step (the flags are static), not one with a lax.cond: XLA:CPU runs a
        # conditional's branch ~8x slower than the same computation outside one (R1: 5.4 s against 0.64 s,
        # BENCHMARKS.md), which made every R1 step cost five plain ones.
        if do_r1:
            d_params, d_opt, metrics["r1"] = r1_update(d_params, d_opt)

        def g_update(g_params, g_opt, g_ema):
            def g_loss(g_params):
                logits = disc.apply(d_params, _fake(cfg, g_params, k_g, b, shard))
                return jnp.mean(jax.nn.softplus(-logits))

            loss_g, grads = jax.value_and_grad(g_loss)(g_params)
            updates, g_opt = g_tx.update(grads, g_opt, g_params)
            g_params = optax.apply_updates(g_params, updates)
            beta = ema_beta(cfg, state.step)
            g_ema = jax.tree.map(lambda p, e: p + beta * (e - p), g_params, g_ema)
            return g_params, g_opt, g_ema, loss_g

        # A discriminator warm-up step (``train_g`` False) leaves G, its Adam state and the EMA untouched.
        g_params, g_opt, g_ema = state.g_params, state.g_opt, state.g_ema
        if train_g:
            g_params, g_opt, g_ema, metrics["loss_g"] = g_update(g_params, g_opt, g_ema)
        return GanState(state.step + 1, g_params, d_params, g_ema, g_opt, d_opt, state.key), metrics

    jitted = jax.jit(step, static_argnums=(2, 3), in_shardings=(replicated, batched),
                     out_shardings=(replicated, replicated), donate_argnums=(0,))

    def run(state: GanState, reals, do_r1: bool, train_g: bool = True):
        return jitted(state, reals, bool(do_r1), bool(train_g))  # a step without R1 reports no penalty, etc.

    run.lower = lambda state, reals, do_r1, train_g=True: jitted.lower(state, reals, bool(do_r1), bool(train_g))

    return run


@partial(jax.jit, static_argnames=("config",))
def sample_images(config: GeneratorConfig, g_params, z, noise_key, psi=1.0, w_avg=None):
    """Images (B, S, S, 3) of ``z`` (B, D) with fresh noise from ``noise_key`` (truncated towards ``w_avg``)."""
    gen = Generator(config)
    w = gen.apply(g_params, z, method=Generator.mapping)
    if w_avg is not None:
        w = w_avg + psi * (w - w_avg)
    w_plus = jnp.broadcast_to(w[:, None], (w.shape[0], config.n_latent, config.style_dim))
    image, _ = gen.apply(g_params, w_plus, make_noise(config, noise_key, w.shape[0]))
    return image


def config_json(cfg: GanConfig) -> str:
    return json.dumps(cfg.to_json(), indent=1, sort_keys=True)
