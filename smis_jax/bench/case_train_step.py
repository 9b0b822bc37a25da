"""``bench train-step``: encoder updates (labelling included) per second, the original's step beside ours."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from smis_jax import builtin, labeling
from smis_jax.bench.harness import (
    Memory,
    TimedPath,
    aot_compile,
    check_fits,
    device_info,
    flops_of,
    host_context,
    measure,
    median,
    result_row,
    xla_bytes,
)
from smis_jax.bench.inputs import make_prototypes, normal
from smis_jax.bench.presets import LABEL_SIZE, BenchError, Preset
from smis_jax.bench.reference import class_pair_flops, original_sparse_labels, vectors_by_class
from smis_jax.config import TrainConfig, get_domain
from smis_jax.experiment import encoder_config
from smis_jax.io import load_generator
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, init_params, make_noise
from smis_jax.training import (StepConfig, TrainState, data_mesh, init_train_state, latent_loss, make_train_step,
                               optimizer, sample_latents)

__all__ = ["bench_train_step"]

def _original_render_step(cfg, gen_params, key):
    """coach.py:137-140: sample and render at full resolution (the image is kept for logging)."""
    key_w, key_noise = jax.random.split(key)
    w_plus = sample_latents(cfg, gen_params, key_w)
    noise = make_noise(cfg.generator, key_noise, cfg.batch_size)
    image, features = Generator(cfg.generator).apply(gen_params, w_plus, noise)
    return w_plus, image, features


def _original_update(cfg, state, gen_params, labels, w_plus, latent_avg, key):
    """coach.py:142-149: one-hot -> encoder (train mode) -> latent loss -> Ranger, plus the full decoder forward on
    the encoder's output with fresh noise (coach.py:146; logged only, so it is returned, not used)."""
    onehot = labeling.labels_to_onehot(labels, cfg.encoder.input_nc)
    grad_fn = jax.value_and_grad(partial(latent_loss, cfg), has_aux=True)
    (loss, (batch_stats, _, latent, _)), grads = grad_fn(state.params, state.batch_stats, onehot, w_plus, latent_avg)
    updates, opt_state = optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    y_hat, _ = Generator(cfg.generator).apply(gen_params, latent, make_noise(cfg.generator, key, cfg.batch_size))
    return TrainState(state.step + 1, params, batch_stats, opt_state, state.key), loss, y_hat


def _original_dense_step(cfg, state, gen_params, protos, latent_avg):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    key_sample, key_decode = jax.random.split(key)
    w_plus, image, features = _original_render_step(cfg, gen_params, key_sample)
    labels = labeling.pseudo_label(features, protos, out_size=LABEL_SIZE, compat=cfg.compat)
    state, loss, y_hat = _original_update(cfg, state, gen_params, labels, w_plus, latent_avg, key_decode)
    return state, loss, image, y_hat


def bench_train_step(preset: Preset, mode: str, batches: Sequence[int] = (2,), repeats: int = 3,
                     vectors_per_class: int = 9, max_memory_gb: float | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Encoder updates (labelling included) per second, original path vs ours; images/s = batch x steps/s."""
    gcfg = preset.generator
    n_classes = preset.n_classes(mode)
    device = device_info()
    memory = Memory()
    key_params, key_protos = jax.random.split(jax.random.key(seed))
    gen_params = init_params(gcfg, key_params)
    protos = make_prototypes(gcfg, gen_params, mode, n_classes, key_protos, vectors_per_class)
    vecs = vectors_by_class(protos) if mode == "sparse" else None
    latent_avg = normal(seed + 1, (gcfg.n_latent, gcfg.style_dim))
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    rows = []
    for batch in batches:
        cfg = StepConfig(generator=gcfg, encoder=preset.encoder_config(mode), batch_size=batch)
        holder = {"state": init_train_state(cfg, seed)}  # one encoder state, threaded through both paths
        args = (gen_params, protos, latent_avg)
        ours_jit = make_train_step(cfg, mesh)
        ours_c, ours_compile = aot_compile(ours_jit, holder["state"], *args)

        def ours_run(r):
            holder["state"], metrics = ours_c(holder["state"], *args)
            return jax.device_get(metrics)

        ours = TimedPath("ours", ours_run, ours_compile, *flops_of(ours_c, ours_jit, holder["state"], *args),
                     xla_bytes(ours_c))
        if mode == "dense":
            step = jax.jit(partial(_original_dense_step, cfg), in_shardings=(replicated,) * 4,
                           out_shardings=replicated, donate_argnums=(0,))
            orig_c, orig_compile = aot_compile(step, holder["state"], *args)

            def orig_run(r):
                holder["state"], loss, image, y_hat = orig_c(holder["state"], *args)
                jax.block_until_ready((image, y_hat))
                return float(loss)

            original = TimedPath("original-jax", orig_run, orig_compile, *flops_of(orig_c, step, holder["state"], *args),
                             xla_bytes(orig_c))
        else:
            render = jax.jit(partial(_original_render_step, cfg), out_shardings=replicated)
            update = jax.jit(partial(_original_update, cfg), out_shardings=replicated, donate_argnums=(0,))
            key0 = jax.random.key(0)
            render_c, t_render = aot_compile(render, gen_params, key0)
            w0, _, f0 = render_c(gen_params, key0)
            labels0 = jnp.zeros((batch, LABEL_SIZE, LABEL_SIZE), jnp.int32)
            update_c, t_update = aot_compile(update, holder["state"], gen_params, labels0, w0, latent_avg, key0)
            stages = {"render": [], "label": [], "update": []}

            def orig_run(r):
                state = holder["state"]
                key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
                key_sample, key_decode = jax.random.split(key)
                t0 = time.perf_counter()
                w_plus, image, features = render_c(gen_params, key_sample)
                jax.block_until_ready(image)
                t1 = time.perf_counter()
                labels = original_sparse_labels(features, vecs, cfg.topk, cfg.cos_th, LABEL_SIZE)
                t2 = time.perf_counter()
                holder["state"], loss, y_hat = update_c(state, gen_params, jnp.asarray(labels), w_plus,
                                                        latent_avg, key_decode)
                jax.block_until_ready(y_hat)
                if r > 0:
                    stages["render"].append(t1 - t0)
                    stages["label"].append(t2 - t1)
                    stages["update"].append(time.perf_counter() - t2)
                return float(loss)

            (f_render, source), (f_update, _) = (flops_of(render_c, render, gen_params, key0),
                                                 flops_of(update_c, update, holder["state"], gen_params, labels0,
                                                        w0, latent_avg, key0))
            flops = None if None in (f_render, f_update) else (
                f_render + f_update + batch * class_pair_flops(vecs, FEATURE_RES**2))
            original = TimedPath("original-jax", orig_run, t_render + t_update, flops,
                             f"{source} (render, update) + analytic (per-class matmuls)",
                             max(xla_bytes(render_c) or 0, xla_bytes(update_c) or 0) or None)
            original.stages = stages
        base = {"config": preset.name, "mode": mode, "batch": batch, "resolution": gcfg.size,
                "encoder": preset.encoder, "n_classes": n_classes, "n_prototype_vectors": int(protos.vectors.shape[0]),
                **host_context()}
        skip = check_fits([original, ours], None if max_memory_gb is None else max_memory_gb * 2**30)
        if skip:
            rows.append({"bench": "train-step", "path": "skipped", **base, "dtype": "float32", **device,
                         "skipped": skip})
            continue
        measure([original, ours], repeats, memory)
        if mode == "sparse":
            original.compile_s += max(0.0, original.first_s - median(original.times))
        orig_row = result_row("train-step", original, base, batch, "images_per_s", "float32", device)
        ours_row = result_row("train-step", ours, base, batch, "images_per_s", "float32", device)
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        rows += [orig_row, ours_row]
        del holder, ours_c, original, ours
    return rows



# ---------------------------------------------------------------------------------------------------------------
# The built-in domains' step: the previous release's (256x256 masks, batch 4) beside today's defaults.

BUILTIN_BEFORE = {"mask_size": 256, "batch_size": 4}  # the built-in schedule up to issue 21


def bench_builtin_step(domain: str = "shapes", batches: Sequence[int] | None = None, repeats: int = 3,
                       seed: int = 0, **overrides) -> list[dict[str, Any]]:
    """Samples per second of the built-in main job's training step (sampling, labelling, encoder update), on the
    shipped generator: the previous release's schedule (masks and labels at 256, batch 4) beside the domain's
    defaults now (``TrainConfig.for_domain``; ``batches`` and ``overrides`` change the new path only), timed in
    turns in one process. The rows' ``speedup_vs_previous`` is the ratio of samples per second."""
    dom = get_domain(domain)
    if not dom.builtin:
        raise BenchError(f"bench train-step --config {domain}: not a built-in domain")
    generator = load_generator(builtin.generator_path())
    gcfg = generator.config
    device = device_info()
    memory = Memory()
    protos = make_prototypes(gcfg, generator.params, dom.mode, dom.n_classes, jax.random.key(seed + 2))
    latent_avg = jnp.broadcast_to(generator.truncation_latent(), (gcfg.n_latent, gcfg.style_dim))
    mesh = data_mesh()
    args = (generator.params, protos, latent_avg)
    now = TrainConfig.for_domain(domain, **overrides)
    rows = []
    for batch in (batches or [now.batch_size]):
        variants = {"previous": now.replace(**BUILTIN_BEFORE, label_lambda=0.0, image_lambda=0.0, offset_res=0),
                    "ours": now.replace(batch_size=batch)}
        paths, bases = [], {}
        for name, cfg in variants.items():
            step_cfg = StepConfig.of(cfg, gcfg, encoder_config(cfg, gcfg))
            holder = {"state": init_train_state(step_cfg, seed)}
            jitted = make_train_step(step_cfg, mesh)
            compiled, t_compile = aot_compile(jitted, holder["state"], *args)

            def run(r, compiled=compiled, holder=holder):
                holder["state"], metrics = compiled(holder["state"], *args)
                return jax.device_get(metrics)

            paths.append(TimedPath(name, run, t_compile, *flops_of(compiled, jitted, holder["state"], *args),
                                   xla_bytes(compiled)))
            bases[name] = {"config": domain, "mode": dom.mode, "batch": cfg.batch_size, "resolution": gcfg.size,
                           "encoder": cfg.encoder, "mask_size": cfg.mask_size, "label_lambda": cfg.label_lambda,
                           "image_lambda": cfg.image_lambda, "offset_res": cfg.offset_res,
                           "n_classes": dom.n_classes, **host_context()}
        measure(paths, repeats, memory)
        prev, ours = (result_row("train-step", p, bases[p.name], bases[p.name]["batch"], "images_per_s", "float32",
                                 device) for p in paths)
        ours["speedup_vs_previous"] = ours["images_per_s"] / prev["images_per_s"]
        rows += [prev, ours]
    return rows
