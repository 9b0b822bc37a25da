"""``bench train-step``: encoder updates (labelling included) per second, the original's step beside ours."""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from smis_jax import labeling
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
from smis_jax.bench.presets import LABEL_SIZE, Preset
from smis_jax.bench.reference import class_pair_flops, original_sparse_labels, vectors_by_class
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
    (loss, (batch_stats, _, latent)), grads = grad_fn(state.params, state.batch_stats, onehot, w_plus, latent_avg)
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

