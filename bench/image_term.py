"""The built-in training step's cost with and without the image-space term, or the encoder's offset head (issue 21),
side by side in one process.

    python bench/image_term.py [ROUNDS] [image|head]   # default 4 rounds of 5 steps per variant, interleaved

``image`` (default): the W+ MSE only, the image term on the whole batch of 32, and on a sub-batch (--image-batch 8
and 4), all without the offset head. ``head``: the image term without and with the offset head (--offset-res 8).
The shipped generator, the paper's prototypes (bench.inputs; labelling costs alike for every variant), the built-in
schedule otherwise. Prints each variant's steps per second (median, min, max over rounds) and the medians relative
to the first."""
import sys, time, json
import jax, jax.numpy as jnp, numpy as np
from smis_jax import builtin
from smis_jax.bench.inputs import make_prototypes
from smis_jax.config import TrainConfig, get_domain
from smis_jax.experiment import encoder_config
from smis_jax.io import load_generator
from smis_jax.training import StepConfig, data_mesh, init_train_state, make_train_step

dom = get_domain("shapes")
g = load_generator(builtin.generator_path()); gc = g.config
protos = make_prototypes(gc, g.params, dom.mode, dom.n_classes, jax.random.key(2))
latent_avg = jnp.broadcast_to(g.truncation_latent(), (gc.n_latent, gc.style_dim))
mesh = data_mesh()
which = sys.argv[2] if len(sys.argv) > 2 else "image"
variants = {"image": {"w+ only": dict(image_lambda=0.0), "image all 32": dict(image_lambda=1.0, offset_res=0),
                      "image 8 of 32": dict(image_lambda=1.0, image_batch=8, offset_res=0),
                      "image 4 of 32": dict(image_lambda=1.0, image_batch=4, offset_res=0)},
            "head": {"image term": dict(image_lambda=1.0, offset_res=0),
                     "image term + head 8": dict(image_lambda=1.0, offset_res=8)}}[which]
steps = {}
for name, ov in variants.items():
    cfg = TrainConfig.for_domain("shapes", **ov)
    sc = StepConfig.of(cfg, gc, encoder_config(cfg, gc))
    fn = make_train_step(sc, mesh)
    state = init_train_state(sc, 0)
    t = time.perf_counter(); state, m = fn(state, g.params, protos, latent_avg); jax.block_until_ready(m)
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
    v = np.array(s[2]); print(f"{name:20s} steps/s median {np.median(v):.3f} min {v.min():.3f} max {v.max():.3f}")
base = np.median(next(iter(steps.values()))[2])
print(json.dumps({k: round(float(np.median(s[2]) / base), 3) for k, s in steps.items()}))
