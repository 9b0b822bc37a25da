"""Encoder training (SPEC.md 1e): one jitted, data-parallel step; orbax checkpoints that resume exactly.

Each step: z -> w (mapping) -> generator stopped after its 64x64 block -> pseudo-label -> one-hot -> encoder
(train-mode BatchNorm) -> ``l2 * MSE(codes + latent_avg, w) (+ w_norm)`` -> Ranger. The full-resolution image and the
decoder pass on the encoder's output are not needed by the loss and are only rendered for previews
(SPEC.md 5.3).

Data parallelism: a 1-D ``data`` mesh over all devices (one device included). The sampled batch is sharded along
it; the encoder state, the frozen generator and the prototypes are replicated; XLA inserts the all-reduces
(gradients, BatchNorm batch statistics). The generator's parameters are an argument of the step (never closed
over, never donated); the encoder state is donated. Randomness is ``fold_in(seed_key, step)``, so a resumed run
draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from einops import rearrange
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smis_jax import hosts, labelers, labeling
from smis_jax.config import TrainConfig
from smis_jax.errors import ConfigError, MissingFileError, UserError
from smis_jax.nets import ops
from smis_jax.nets.psp import EncoderConfig, GradualStyleEncoder, codes_and_offsets, init_variables
from smis_jax.nets.stylegan2 import Generator, GeneratorConfig, make_noise
from smis_jax.optim import ranger

__all__ = [
    "TrainState",
    "StepConfig",
    "TrainingError",
    "data_mesh",
    "state_sharding",
    "init_train_state",
    "make_train_step",
    "make_preview",
    "sample_latents",
    "Checkpointer",
]


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32: updates done so far
    params: Any  # encoder params
    batch_stats: Any  # encoder BatchNorm running statistics
    opt_state: Any  # Ranger state
    key: jax.Array  # (2,) uint32 raw key data of the run's seed; step keys are fold_in(key, step)


@dataclass(frozen=True)
class StepConfig:
    """The static parts of a training step (hashable: it keys the compiled step). Built from a run's
    :class:`~smis_jax.config.TrainConfig` by :meth:`of`; the defaults below are TrainConfig's, never restated."""

    generator: GeneratorConfig
    encoder: EncoderConfig
    batch_size: int
    learning_rate: float = TrainConfig.learning_rate
    max_steps: int = TrainConfig.max_steps
    lr_decay_steps: int = TrainConfig.lr_decay_steps
    l2_lambda: float = TrainConfig.l2_lambda
    w_norm_lambda: float = TrainConfig.w_norm_lambda
    train_wplus: bool = TrainConfig.train_wplus
    topk: int = TrainConfig.topk
    cos_th: float = TrainConfig.cos_th
    label_lambda: float = TrainConfig.label_lambda
    label_temperature: float = TrainConfig.label_temperature
    image_lambda: float = TrainConfig.image_lambda
    image_batch: int = TrainConfig.image_batch
    compat: bool = False  # dense labels: let zero prototypes of absent classes compete (the original's bug)

    def __post_init__(self):
        if self.encoder.style_num != self.generator.n_latent or self.encoder.style_dim != self.generator.style_dim:
            raise ConfigError(
                f"encoder produces ({self.encoder.style_num}, {self.encoder.style_dim}) codes but the generator takes "
                f"({self.generator.n_latent}, {self.generator.style_dim})")

    @classmethod
    def of(cls, cfg: TrainConfig, generator: GeneratorConfig, encoder: EncoderConfig) -> "StepConfig":
        """The step of a run: every field that TrainConfig also has comes from ``cfg``."""
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name not in ("generator", "encoder") and hasattr(cfg, f.name)}  # TrainConfig.encoder: a size
        return cls(generator=generator, encoder=encoder, **shared)


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: all devices, all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("data",))


def state_sharding(mesh: Mesh) -> NamedSharding:
    """Where the train state lives on ``mesh``: replicated on every device (the step's in and out sharding, and
    what a checkpoint is restored onto)."""
    return NamedSharding(mesh, P())


def learning_rate_schedule(cfg: StepConfig) -> float | optax.Schedule:
    """The run's learning rate: constant (``lr_decay_steps`` 0, the paper's), or constant until the last
    ``lr_decay_steps`` of ``max_steps`` and then a half cosine towards 0: the update after ``t`` updates uses
    ``lr * (1 + cos(pi * clip((t - (max_steps - lr_decay_steps)) / lr_decay_steps, 0, 1))) / 2``. A resumed run with
    another ``--max-steps`` moves the decay with it."""
    lr, n = cfg.learning_rate, cfg.lr_decay_steps
    if not n:
        return lr
    return optax.join_schedules([optax.constant_schedule(lr), optax.cosine_decay_schedule(lr, n)],
                                [cfg.max_steps - n])


def optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    return ranger(learning_rate_schedule(cfg))


@partial(jax.jit, static_argnames=("cfg",))
def _init_state(cfg: StepConfig, key: jax.Array) -> TrainState:
    init_key, run_key = jax.random.split(key)
    variables = init_variables(cfg.encoder, init_key)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                      opt_state=optimizer(cfg).init(params), key=jax.random.key_data(run_key))


def init_train_state(cfg: StepConfig, seed: int) -> TrainState:
    """A fresh encoder (PyTorch default initialisation, as the original trains from scratch) and Ranger state."""
    return _init_state(cfg, jax.random.key(seed))


def sample_latents(cfg: StepConfig, gen_params, key: jax.Array) -> jax.Array:
    """The W (broadcast to W+) or, with ``train_wplus``, the W+ codes of a batch: (B, S, D).

    W+ sampling maps every layer's own z and applies PixelNorm over the feature axis (the original normalised over
    the layer axis: SPEC.md 5.1 bug 1).
    """
    g, b = cfg.generator, cfg.batch_size
    generator = Generator(g)
    if cfg.train_wplus:
        z = jax.random.normal(key, (b * g.n_latent, g.style_dim))
        w = generator.apply(gen_params, z, method=Generator.mapping)
        return rearrange(w, "(b l) d -> b l d", b=b)  # W+: one mapped z per (sample, layer)
    z = jax.random.normal(key, (b, g.style_dim))
    w = generator.apply(gen_params, z, method=Generator.mapping)
    return jnp.broadcast_to(w[:, None, :], (b, g.n_latent, g.style_dim))


def _pseudo_pairs(cfg: StepConfig, gen_params, protos, key: jax.Array, shard: Callable, with_noise: bool = False):
    """Sample a batch and pseudo-label it: (w_plus (B, S, D), labels (B, M, M) int32), M the encoder's input size
    (and the noise the sample was rendered with, ``with_noise``). ``protos``: the run's
    :class:`~smis_jax.labelers.Labeler` (or the paper's prototypes)."""
    key_w, key_noise = jax.random.split(key)
    w_plus = shard(sample_latents(cfg, gen_params, key_w))
    # every layer's noise when the image is rendered (image_lambda); its first layers are those up to 64x64
    full = with_noise and cfg.image_lambda > 0
    noise = [shard(n) for n in make_noise(cfg.generator, key_noise, cfg.batch_size, until_res=None if full else 64)]
    labels = labelers.label_latents(cfg.generator, gen_params, w_plus, noise[:cfg.generator.num_noise_layers(64)],
                                    protos, topk=cfg.topk,
                                    cos_th=cfg.cos_th, out_size=cfg.encoder.input_size, compat=cfg.compat)
    return (w_plus, shard(labels), noise) if with_noise else (w_plus, shard(labels))


def class_vectors(protos) -> labeling.DensePrototypes:
    """Dense prototypes as they are, or, from sparse ones, the normalised mean of each class's annotated vectors
    (the dense vectors the original's post-refinement uses for sparse sets too)."""
    if isinstance(protos, labeling.DensePrototypes):
        return protos
    sums = jax.ops.segment_sum(protos.vectors, protos.classes, num_segments=protos.n_classes)
    counts = jax.ops.segment_sum(jnp.ones_like(protos.classes), protos.classes, num_segments=protos.n_classes)
    vectors = sums / (jnp.linalg.norm(sums, axis=-1, keepdims=True) + labeling.EPS)
    return labeling.DensePrototypes(vectors=vectors, present=counts > 0)


def label_space_loss(cfg: StepConfig, gen_params, latent, noise, labels, protos, offsets=None) -> jax.Array:
    """Beyond the paper: does the image decoded from the encoder's codes carry the mask it was given? The
    generator's 64x64 features of ``latent`` (rendered with the sample's ``noise``) are scored against the class
    vectors (cosine, absent classes never), and the softmax at ``label_temperature`` is compared with the
    pseudo-labels by cross-entropy, mean over labelled pixels (sparse: class 0 pixels carry no label)."""
    labeler = labelers.as_labeler(protos)
    if labeler.kind != "paper":
        raise ConfigError(f"the label-space loss scores with the paper's prototypes; --labeler {labeler.kind} has "
                          f"none (use --labeler paper with --label-lambda)")
    protos = labeler.protos
    _, features = Generator(cfg.generator).apply(gen_params, latent, noise, until_res=64, offsets=offsets)
    dense = class_vectors(protos)
    scores = labeling.cosine_scores(features, dense)  # (B, 64, 64, L), -inf for absent classes
    h = scores.shape[1]
    step = labels.shape[1] // h
    target = labels[:, ::step, ::step]  # the torch-nearest rule of labeling._reduce_masks
    logp = jax.nn.log_softmax(scores / cfg.label_temperature, axis=-1)
    nll = -jnp.take_along_axis(jnp.where(jnp.isfinite(logp), logp, -1e4), target[..., None], axis=-1)[..., 0]
    weight = (target > 0).astype(jnp.float32) if isinstance(protos, labeling.SparsePrototypes) else jnp.ones_like(nll)
    return jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def image_space_loss(cfg: StepConfig, gen_params, latent, w_plus, noise, offsets=None) -> jax.Array:
    """Beyond the paper, pSp's image term: MSE between the sample (``w_plus``, fixed) and the image decoded from the
    encoder's ``latent`` (and its offset head's ``offsets``), both with the sample's ``noise`` (every layer) and
    average-pooled to at most 64x64."""
    generator = Generator(cfg.generator)
    target, _ = generator.apply(gen_params, w_plus, noise)
    image, _ = generator.apply(gen_params, latent, noise, offsets=offsets)
    side = min(64, cfg.generator.size)
    pool = partial(ops.adaptive_avg_pool, out_hw=(side, side))
    return jnp.mean((pool(image.astype(jnp.float32)) - jax.lax.stop_gradient(pool(target.astype(jnp.float32)))) ** 2)


def latent_loss(cfg: StepConfig, params, batch_stats, onehot, w_plus, latent_avg):
    """pSp's loss on W+: ``l2_lambda * MSE(encoder(onehot) + latent_avg, w_plus) + w_norm_lambda * WNorm``.

    Returns ``(loss, (new batch_stats, metrics, latent, offsets))``; the encoder runs in train mode (batch
    statistics). ``offsets``: the offset head's ``{res: (B, r, r, C)}`` (None without one); no loss on W+ reaches
    it, the image- and label-space terms train it.
    """
    out, updates = GradualStyleEncoder(cfg.encoder).apply(
        {"params": params, "batch_stats": batch_stats}, onehot, True, mutable=["batch_stats"])
    codes, offsets = codes_and_offsets(cfg.encoder, out)
    latent = codes + latent_avg  # (B, S, D)
    l2 = jnp.mean((latent - w_plus) ** 2)
    # pSp's WNorm: sum over the batch of ||latent_b - latent_avg||_F, divided by B.
    w_norm = jnp.mean(jnp.sqrt(jnp.sum((latent - latent_avg) ** 2, axis=(1, 2))))
    loss = cfg.l2_lambda * l2 + cfg.w_norm_lambda * w_norm
    metrics = {"loss": loss, "loss_l2": l2, "w_norm": w_norm}
    if offsets is not None:
        metrics["offset_rms"] = jnp.sqrt(jnp.mean(offsets[cfg.encoder.offset_res] ** 2))
    return loss, (updates["batch_stats"], metrics, latent, offsets)


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: StepConfig, mesh: Mesh):
    """One jitted ``step(state, gen_params, protos, latent_avg) -> (state, metrics)`` per (config, mesh).

    ``state`` is donated; ``gen_params``, ``protos`` and ``latent_avg (S, D)`` are replicated arguments. The batch
    (``cfg.batch_size``, a multiple of the device count) is sampled inside and sharded over ``mesh``.
    """
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {n_dev} devices of the mesh")
    replicated = state_sharding(mesh)
    batch_sharding = NamedSharding(mesh, P("data"))
    tx, lr = optimizer(cfg), learning_rate_schedule(cfg)

    def shard(x):
        return jax.lax.with_sharding_constraint(x, batch_sharding)

    def loss_fn(params, batch_stats, onehot, w_plus, latent_avg, gen_params, noise, labels, protos):
        loss, (batch_stats, metrics, latent, offsets) = latent_loss(cfg, params, batch_stats, onehot, w_plus,
                                                                    latent_avg)
        if cfg.label_lambda:
            label_loss = label_space_loss(cfg, gen_params, latent, noise[:cfg.generator.num_noise_layers(64)], labels,
                                          protos, offsets)
            loss = loss + cfg.label_lambda * label_loss
            metrics = {**metrics, "loss": loss, "loss_label": label_loss}
        if cfg.image_lambda:
            every = slice(None, None, cfg.batch_size // cfg.image_batch if cfg.image_batch else 1)
            image_loss = image_space_loss(cfg, gen_params, latent[every], w_plus[every], [n[every] for n in noise],
                                          None if offsets is None else {r: o[every] for r, o in offsets.items()})
            loss = loss + cfg.image_lambda * image_loss
            metrics = {**metrics, "loss": loss, "loss_image": image_loss}
        return loss, (batch_stats, metrics, latent)

    def step(state: TrainState, gen_params, protos, latent_avg):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        w_plus, labels, noise = _pseudo_pairs(cfg, gen_params, protos, key, shard, with_noise=True)
        onehot = shard(labeling.labels_to_onehot(labels, cfg.encoder.input_nc))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (batch_stats, metrics, _)), grads = grad_fn(state.params, state.batch_stats, onehot, w_plus, latent_avg,
                                                        gen_params, noise, labels, protos)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["labelled_fraction"] = jnp.mean((labels > 0).astype(jnp.float32))
        if callable(lr):
            metrics["lr"] = lr(state.opt_state.count)  # the rate this update used
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state, state.key)
        return new_state, metrics

    return jax.jit(step, in_shardings=(replicated, replicated, replicated, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


PREVIEW_ROWS = 8  # samples per preview grid (the first of a training batch)


class Preview(NamedTuple):
    labels: np.ndarray  # (B, 256, 256) int32 pseudo-labels
    sample: np.ndarray  # (B, 256, 256, 3) the generator's sample, pooled to 256
    reconstruction: np.ndarray  # (B, 256, 256, 3) the image from the encoder's codes for that label (same noise)


def make_preview(cfg: StepConfig):
    """A jitted ``preview(state, gen_params, protos, latent_avg, key) -> Preview`` for image grids: full-resolution
    renders of a fresh pseudo-labelled batch and of the encoder's (eval-mode) reconstruction from its label."""

    @jax.jit
    def preview(state: TrainState, gen_params, protos, latent_avg, key):
        key_pairs, key_noise = jax.random.split(key)
        w_plus, labels = _pseudo_pairs(cfg, gen_params, protos, key_pairs, lambda x: x)
        rows = min(cfg.batch_size, PREVIEW_ROWS)
        w_plus, labels = w_plus[:rows], labels[:rows]
        noise = make_noise(cfg.generator, key_noise, rows)
        generator = Generator(cfg.generator)
        sample, _ = generator.apply(gen_params, w_plus, noise)
        out = GradualStyleEncoder(cfg.encoder).apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            labeling.labels_to_onehot(labels, cfg.encoder.input_nc), False)
        codes, offsets = codes_and_offsets(cfg.encoder, out)
        recon, _ = generator.apply(gen_params, codes + latent_avg, noise, offsets=offsets)
        pool = partial(ops.adaptive_avg_pool, out_hw=(256, 256))
        f = 256 // labels.shape[1]  # labels at the encoder's input size, shown at 256 like the images
        return jnp.repeat(jnp.repeat(labels, f, axis=1), f, axis=2), pool(sample), pool(recon)

    def run(state, gen_params, protos, latent_avg, key) -> Preview:
        return Preview(*jax.device_get(preview(state, gen_params, protos, latent_avg, key)))

    return run


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


class Checkpointer:
    """orbax ``CheckpointManager`` over ``workdir/checkpoints``: the train state (encoder params, BatchNorm stats,
    Ranger state, step, key), the prototypes and a JSON record of the run, saved atomically per step.

    With several processes (``--distributed``) every process creates it and calls every method: orbax's multi-host
    saving coordinates them (each array written once, the step committed when all are done), and :meth:`restore`
    places the state on the shardings of the abstract state it is given."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "protos", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, protos, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            protos=ocp.args.StandardSave(labelers.to_state(protos)),
            meta=ocp.args.JsonSave({**meta, "step": step}),
        ), force=True)

    def restore(self, abstract_state: TrainState, step: int | None = None):
        """(state, protos, meta) of ``step`` (default: the latest). ``abstract_state``: ShapeDtypeStructs with the
        sharding the state is to have (:func:`abstract_like` with :func:`state_sharding` of the run's mesh); the
        labeller comes back from numpy arrays (the same on every process; prototypes alone load as ``paper``)."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            protos=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        return restored.state, labelers.from_state(restored.protos), dict(restored.meta)

    def restore_intact(self, abstract_state: TrainState, log: Callable[[str], None] = print):
        """:meth:`restore` of the newest checkpoint that restores. Each newer, damaged one (a folder or file of it
        deleted or truncated) is named in a warning and moved to ``checkpoints-damaged/`` so that the resumed run
        can save its step again; TrainingError in one line when none restores."""
        damaged: list[int] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(abstract_state, step)
            except Exception as e:  # noqa: BLE001 - orbax raises many kinds (KeyError, ValueError, OSError, ...)
                damaged.append(step)
                log(f"warning: checkpoint {self.directory / str(step)} is damaged ({_one_line(e)}); "
                    f"trying an older one")
                continue
            if damaged:
                aside = self.directory.parent / "checkpoints-damaged"
                if hosts.is_writer():
                    aside.mkdir(exist_ok=True)
                    for bad in damaged:
                        target = aside / str(bad)
                        n = 1
                        while target.exists():
                            target, n = aside / f"{bad}.{n}", n + 1
                        (self.directory / str(bad)).rename(target)
                hosts.barrier("damaged checkpoints moved")
                self.manager.reload()
                log(f"warning: resuming from step {step}, the newest intact checkpoint; damaged step(s) "
                    f"{', '.join(map(str, damaged))} moved to {aside}")
            return restored
        raise TrainingError(f"no usable checkpoint in {self.directory} (damaged: "
                            f"{', '.join(map(str, damaged)) or 'none found'}); delete that folder to start over, "
                            f"or use another --workdir")

    def save_now(self, state: TrainState, protos, meta: dict[str, Any]) -> None:
        """:meth:`save` and wait until it is on disk; a failure (a full or read-only disk, ...) is one TrainingError
        naming the step, the folder, the reason and the newest checkpoint that is intact."""
        step = int(jax.device_get(state.step))
        # orbax logs a failed background write as tracebacks, and tensorstore's callbacks into orbax's closed event
        # loops print one "Event loop is closed" traceback each; the one line below says all they say.
        # asyncio reports the failed write tasks again ("Task exception was never retrieved") when they are collected.
        absl, aio, hook, unraisable = (logging.getLogger("absl"), logging.getLogger("asyncio"), sys.excepthook,
                                       sys.unraisablehook)
        levels = absl.level, aio.level
        absl.setLevel(logging.CRITICAL)
        aio.setLevel(logging.CRITICAL)
        closed = lambda v: isinstance(v, RuntimeError) and "Event loop is closed" in str(v)  # noqa: E731
        sys.excepthook = lambda t, v, tb: None if closed(v) else hook(t, v, tb)
        sys.unraisablehook = lambda u: None if closed(u.exc_value) else unraisable(u)
        try:
            self.save(state, protos, meta)
            self.manager.wait_until_finished()
            absl.setLevel(levels[0])
            aio.setLevel(levels[1])
            sys.excepthook, sys.unraisablehook = hook, unraisable
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds (OSError, ValueError, its own, ...)
            try:
                intact = self.manager.reload() or self.manager.latest_step()
            except Exception:  # noqa: BLE001
                intact = None
            newest = f"the newest intact checkpoint is step {intact}" if intact is not None and intact != step \
                else "no earlier checkpoint was written"
            raise TrainingError(f"saving checkpoint {step} in {self.directory} failed ({_one_line(e)}); the run "
                                f"stopped at step {step}, {newest}; make room or fix the folder's permissions, "
                                f"then run again with --resume") from None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line (orbax messages can hold whole tree dumps), led by the operating system's
    reason when tensorstore gives only its number (``os_error_code='27'`` -> ``File too large``)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > limit:  # the head names the operation, the tail the operating system's reason
        text = f"{text[:limit * 3 // 5]} ... {text[-(limit * 2 // 5):]}"
    code = re.search(r"os_error_code='?(\d+)", str(e))
    reason = os.strerror(int(code.group(1))) if code else ""
    return f"{reason}; {type(e).__name__}: {text}" if reason and reason not in text else f"{type(e).__name__}: {text}"


def abstract_train_state(cfg: StepConfig, sharding=None) -> TrainState:
    """What ``init_train_state(cfg, seed)`` returns, as ShapeDtypeStructs with ``sharding`` (computes nothing): the
    target to restore a checkpoint into."""
    return abstract_like(jax.eval_shape(lambda: _init_state(cfg, jax.random.key(0))), sharding)


def abstract_like(state: TrainState, sharding=None) -> TrainState:
    """ShapeDtypeStructs of ``state`` to restore into, with ``sharding`` (one for every leaf; None: restore as
    numpy arrays)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
