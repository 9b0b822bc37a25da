"""The GAN trainer's step on this machine (issue 26): by part, the previous step beside today's, and the
labelling path of the same generator for scale.

    python bench/gan_step.py [--batch 16] [--rounds 3] [--previous 8b15882] [--out bench/gan-step.json]

* **by part** (today's code, the shipped run's networks): G forward, G forward + backward through D, D forward +
  backward on reals and fakes, R1 (the double backward), each jitted alone: wall time (median of 5),
  XLA's FLOP count (``cost_analysis``) and the FLOP/s they make.
* **previous vs today**: ``smis_jax/gan`` as it stood at ``--previous`` (read from git) and today's, both
  compiled here, a plain step and an R1 step timed in turns (each round: 3 plain steps and 1 R1 step of each);
  seconds per kimg at the run's R1 interval of 16.
* **labelling path**: the built-in training step's sampling and labelling (z -> W -> the shipped generator to
  64x64 -> the paper's labels) at the same batch: the FLOP/s this CPU makes on the same network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin, gan, labeling
from smis_jax.bench.inputs import make_prototypes, sample
from smis_jax.gan import Discriminator, GanConfig, _fake, init_state
from smis_jax.io import load_generator
from smis_jax.nets.stylegan2 import FEATURE_RES
from smis_jax.training import data_mesh

REPO = Path(__file__).resolve().parents[1]


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _previous_gan(commit: str):
    for where in ("smis_jax/gan/__init__.py", "smis_jax/gan.py"):  # the package since the house's regrouping
        found = subprocess.run(["git", "show", f"{commit}:{where}"], cwd=REPO, capture_output=True, text=True)
        if found.returncode == 0:
            source = found.stdout
            break
    else:
        raise SystemExit(f"commit {commit} has neither smis_jax/gan/__init__.py nor smis_jax/gan.py")
    path = Path(tempfile.mkdtemp()) / "gan_previous.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gan_previous", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gan_previous"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--previous", default="8b15882", help="git commit of the previous step")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    b = args.batch
    shipped = load_generator(builtin.generator_path())
    prov = json.loads((builtin.generator_path() / "provenance.json").read_text())
    cfg = GanConfig.from_json({**prov["gan"], "batch_size": b})
    state = init_state(cfg)
    state = state.replace(g_params=shipped.params, g_ema=shipped.params)
    disc = Discriminator(cfg.d_channels)
    key = jax.random.key(0)
    reals = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (b, cfg.size, cfg.size, 3)).astype(np.float32))
    ident = lambda x: x  # noqa: E731  (no sharding constraint: one device)
    fake = _fake(cfg, state.g_params, key, b, ident)

    def g_fwd(g):
        return _fake(cfg, g, key, b, ident)

    def g_fwd_bwd(g, d):
        return jax.grad(lambda g: jnp.mean(jax.nn.softplus(-disc.apply(d, _fake(cfg, g, key, b, ident)))))(g)

    def d_fwd_bwd(d, x_real, x_fake):
        return jax.grad(lambda d: jnp.mean(jax.nn.softplus(disc.apply(d, x_fake)))
                        + jnp.mean(jax.nn.softplus(-disc.apply(d, x_real))))(d)

    def r1(d, x):
        def loss(d):
            gx = jax.grad(lambda x: jnp.sum(disc.apply(d, x)))(x)
            return jnp.mean(jnp.sum(gx ** 2, axis=(1, 2, 3)))
        return jax.grad(loss)(d)

    protos = make_prototypes(shipped.config, shipped.params, "dense", 7, jax.random.key(2))

    def labelling(params, protos, key):
        _, features, _ = sample(shipped.config, params, key, b, FEATURE_RES, jnp.float32)
        return labeling.pseudo_label(features, protos, topk=3, cos_th=0.5, out_size=64)

    parts = {"G forward": (g_fwd, (state.g_params,)),
             "G forward + backward (through D)": (g_fwd_bwd, (state.g_params, state.d_params)),
             "D forward + backward (reals, fakes)": (d_fwd_bwd, (state.d_params, reals, fake)),
             "R1 (double backward)": (r1, (state.d_params, reals)),
             "labelling path (sample to 64x64, labels)": (labelling, (shipped.params, protos, key))}
    rows = {}
    for name, (fn, fargs) in parts.items():
        compiled = jax.jit(fn).lower(*fargs).compile()
        t, fl = _time(compiled, *fargs), _flops(compiled)
        rows[name] = {"ms": 1000 * t, "gflop": fl / 1e9, "gflop_s": fl / t / 1e9}
        print(f"{name:44s} {1000 * t:8.1f} ms {fl / 1e9:7.2f} GFLOP {fl / t / 1e9:6.1f} GFLOP/s", flush=True)

    mesh = data_mesh()
    reals_np = np.asarray(reals)
    steps = {"previous": _previous_gan(args.previous).make_train_step(cfg, mesh), "today": gan.make_train_step(cfg, mesh)}
    states = {name: jax.tree.map(lambda a: jnp.array(a, copy=True), state) for name in steps}
    compile_s = {}
    for name, step in steps.items():
        t = time.perf_counter()
        for flag in (False, True):
            states[name], m = step(states[name], reals_np, flag)
            jax.block_until_ready(states[name])
        compile_s[name] = time.perf_counter() - t
    times = {name: {"plain": [], "r1": []} for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for flag, n in ((False, 3), (True, 1)):
                for _ in range(n):
                    t = time.perf_counter()
                    states[name], m = step(states[name], reals_np, flag)
                    jax.block_until_ready(states[name])
                    times[name]["r1" if flag else "plain"].append(time.perf_counter() - t)
    step_rows = {}
    for name in steps:
        plain, r1_t = float(np.median(times[name]["plain"])), float(np.median(times[name]["r1"]))
        per_step = (15 * plain + r1_t) / 16
        step_rows[name] = {"plain_ms": 1000 * plain, "r1_ms": 1000 * r1_t, "s_per_kimg": per_step * 1000 / b,
                           "first_two_steps_s": compile_s[name]}
    # today's FLOPs per plain / R1 step: XLA's count of the programs the trainer runs
    flops_today = {("r1" if flag else "plain"): _flops(steps["today"].lower(state, reals_np, flag).compile())
                   for flag in (False, True)}
    t = step_rows["today"]
    achieved = (15 * flops_today["plain"] + flops_today["r1"]) / (15 * t["plain_ms"] + t["r1_ms"]) * 1000 / 1e9
    label_rate = rows["labelling path (sample to 64x64, labels)"]["gflop_s"]
    for name, r in step_rows.items():
        print(f"step {name:9s} plain {r['plain_ms']:7.1f} ms  R1 {r['r1_ms']:7.1f} ms  {r['s_per_kimg']:5.1f} s/kimg "
              f"(r1 every 16; first two steps incl. compile {r['first_two_steps_s']:.0f} s)")
    print(f"today's step: {achieved:.1f} GFLOP/s = {100 * achieved / label_rate:.0f}% of the labelling path's "
          f"{label_rate:.1f} GFLOP/s; speed-up {step_rows['previous']['s_per_kimg'] / t['s_per_kimg']:.2f}x")
    out = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "batch": b,
           "gan": cfg.to_json(), "jax": jax.__version__, "parts": rows, "steps": step_rows,
           "today_gflop_per_step": {k: v / 1e9 for k, v in flops_today.items()}, "today_gflop_s": achieved,
           "labelling_gflop_s": label_rate, "previous_commit": args.previous}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
