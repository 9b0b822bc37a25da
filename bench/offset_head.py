"""The built-in training step's cost with and without the encoder's offset head (issue 21), side by side in one
process.

    python bench/offset_head.py [ROUNDS]      # default 4 rounds of 5 steps per variant, interleaved

Variants: the built-in default before the head (image term on the whole batch of 32) and the same with
``--offset-res 8``. The shipped generator, the paper's prototypes (bench.inputs; labelling costs alike for both), the
built-in schedule otherwise. Prints each variant's steps per second (median, min, max over rounds) and the medians
relative to the first."""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin
from smis_jax.bench.inputs import make_prototypes
from smis_jax.config import ENCODER_SIZES, TrainConfig, get_domain
from smis_jax.io import load_generator
from smis_jax.nets.psp import EncoderConfig
from smis_jax.training import StepConfig, data_mesh, init_train_state, make_train_step

dom = get_domain("shapes")
g = load_generator(builtin.generator_path())
gc = g.config
protos = make_prototypes(gc, g.params, dom.mode, dom.n_classes, jax.random.key(2))
latent_avg = jnp.broadcast_to(g.truncation_latent(), (gc.n_latent, gc.style_dim))
mesh = data_mesh()
variants = {"image term": dict(image_lambda=1.0, offset_res=0), "image term + head 8": dict(image_lambda=1.0,
                                                                                           offset_res=8)}
steps = {}
for name, ov in variants.items():
    cfg = TrainConfig.for_domain("shapes", **ov)
    widths, units = ENCODER_SIZES[cfg.encoder]
    enc = EncoderConfig(input_nc=dom.n_classes, style_num=gc.n_latent, widths=widths, units=units,
                        style_dim=gc.style_dim, input_size=cfg.mask_size, offset_res=cfg.offset_res,
                        offset_channels=gc.channel(cfg.offset_res) if cfg.offset_res else 0)
    sc = StepConfig.of(cfg, gc, enc)
    fn = make_train_step(sc, mesh)
    state = init_train_state(sc, 0)
    t = time.perf_counter()
    state, m = fn(state, g.params, protos, latent_avg)
    jax.block_until_ready(m)
    print(name, "compile+first", round(time.perf_counter() - t, 1), flush=True)
    steps[name] = [fn, state, []]
rounds, per = int(sys.argv[1]) if len(sys.argv) > 1 else 4, 5
for r in range(rounds):
    for name, s in steps.items():
        t = time.perf_counter()
        for _ in range(per):
            s[1], m = s[0](s[1], g.params, protos, latent_avg)
        jax.block_until_ready(m)
        s[2].append(per / (time.perf_counter() - t))
for name, s in steps.items():
    v = np.array(s[2])
    print(f"{name:20s} steps/s median {np.median(v):.3f} min {v.min():.3f} max {v.max():.3f}")
base = np.median(steps["image term"][2])
print(json.dumps({k: round(float(np.median(s[2]) / base), 3) for k, s in steps.items()}))
