"""``bench inversion``: inversion steps per second for K images, one after another (the original) or all at once."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax.bench.harness import (
    Memory,
    TimedPath,
    device_info,
    flops_of,
    host_context,
    jaxpr_flops,
    measure,
    median,
    result_row,
)
from smis_jax.bench.inputs import normal
from smis_jax.bench.presets import LABEL_SIZE, Preset
from smis_jax.inversion import image_loss, invert
from smis_jax.io import load_lpips
from smis_jax.nets.stylegan2 import Generator, LoadedGenerator, init_params, make_noise

__all__ = ["bench_inversion"]

def bench_inversion(preset: Preset, ks: Sequence[int] = (5,), steps: int = 5, repeats: int = 3, seed: int = 0,
                    xla_flops: bool = True, target_size: int = LABEL_SIZE) -> list[dict[str, Any]]:
    """Inversion steps per second for K images: ours (K at once) vs the original (K sequential one-image runs).

    Image k gets the same key in both paths, so both follow the same trajectories (reported as the largest
    relative difference of the final losses). ``xla_flops=False`` counts the FLOPs from the jaxpr instead of
    compiling the loss gradient once more; ``target_size`` (the original's 256) may be lowered for smoke runs."""
    gcfg = preset.generator
    device = device_info()
    memory = Memory()
    key_params, key_noise, key_runs = jax.random.split(jax.random.key(seed), 3)
    params = init_params(gcfg, key_params)
    noise1 = make_noise(gcfg, key_noise, 1)  # the stored buffers (unused: inversion draws fresh noise every step)
    gen = LoadedGenerator(gcfg, params, noise1, normal(seed + 1, (gcfg.style_dim,)))
    lpips_params = load_lpips().params

    # Model FLOPs of one image-step: generator forward + pooling + MSE + LPIPS, and the gradient (Ranger ignored).
    def one_step_loss(w_plus, noise, target):
        image, _ = Generator(gcfg).apply(params, w_plus, noise)
        return jnp.sum(image_loss(lpips_params, image, target, 1.0, 0.8))

    w1 = jnp.zeros((1, gcfg.n_latent, gcfg.style_dim))
    t1 = jnp.zeros((1, target_size, target_size, 3))
    grad_jit = jax.jit(jax.value_and_grad(one_step_loss))
    if xla_flops:
        step_flops, flops_source = flops_of(grad_jit.lower(w1, noise1, t1).compile(), grad_jit, w1, noise1, t1)
    else:
        step_flops, flops_source = jaxpr_flops(grad_jit, w1, noise1, t1), "analytic (jaxpr convs/matmuls)"
    flops_source += " (value_and_grad of the loss, 1 image; Ranger not counted)"

    rows = []
    for k in ks:
        targets = jnp.asarray(np.random.default_rng(seed + k).uniform(-1, 1, (k, target_size, target_size, 3)),
                              jnp.float32)
        keys = [jax.random.split(jax.random.fold_in(key_runs, r), k) for r in range(repeats + 1)]  # per image

        def ours_run(r):
            return invert(gen, lpips_params, targets, keys=keys[r], steps=steps, chunk=steps).final_loss

        def orig_run(r):
            return np.concatenate([invert(gen, lpips_params, targets[i:i + 1], keys=keys[r][i:i + 1], steps=steps,
                                          chunk=steps).final_loss for i in range(k)])

        flops = step_flops * k * steps
        source = flops_source
        original = TimedPath("original-jax", orig_run, flops=flops, flops_source=source)
        ours = TimedPath("ours", ours_run, flops=flops, flops_source=source)
        measure([original, ours], repeats, memory)
        for p in (original, ours):  # invert() compiles on its first call: the warm-up's extra time
            p.compile_s = max(0.0, p.first_s - median(p.times))
        base = {"config": preset.name, "k_images": k, "batch": k, "steps": steps, "resolution": gcfg.size,
                "target_res": target_size, **host_context()}
        orig_row = result_row("inversion", original, base, k * steps, "image_steps_per_s", "float32", device)
        ours_row = result_row("inversion", ours, base, k * steps, "image_steps_per_s", "float32", device)
        for row in (orig_row, ours_row):
            row["steps_per_s"] = steps / row["time_s_median"]  # steps of all K images per second
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        a, b = np.asarray(ours.first_out, np.float64), np.asarray(original.first_out, np.float64)
        ours_row["final_loss_max_rel_diff_vs_original_jax"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
        rows += [orig_row, ours_row]
    return rows

