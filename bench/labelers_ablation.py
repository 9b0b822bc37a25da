"""Ablation of the pseudo-labellers on ground truth (the built-in ``shapes`` domain), issue 23.

For each inversion seed (the shots' codes as ``train.run --seed S`` inverts them), each labeller, dense masks and
scribbles, 1 and 5 shots: mIoU, accuracy and per-class IoU of the pseudo-labels of N generated samples against
the oracle's segmentation (coverage too for scribbles, whose accuracy is measured where they label).

    python bench/labelers_ablation.py --inversions DIR --seeds 0 1 2 --out docs/builtin/labelers.json

``--inversions``: a folder of ``inv_seed{S}.npz`` (w_plus) to reuse; missing seeds are inverted (300 steps, lr 1,
the built-in schedule) and written there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin, data, labelers, viz
from smis_jax.builtin import shapes
from smis_jax.config import DOMAINS, TrainConfig
from smis_jax.builtin.groundtruth import scores
from smis_jax.io import load_generator, load_lpips
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, make_noise

N_CLASSES = len(shapes.CLASS_NAMES)
# name -> (fit kind, taps): the four labellers, and two combinations measured beside them
# name -> (fit kind, taps, fit on the reliable pixels only)
VARIANTS = {
    "paper": ("paper", (64,), False),
    "knn": ("knn", (64,), True),
    "multiscale": ("multiscale", (16, 32, 64), True),
    "linear": ("linear", (16, 32, 64), True),
    "linear-all-pixels": ("linear", (16, 32, 64), False),
    "linear-64": ("linear", (64,), True),
    "knn-multiscale": ("knn", (16, 32, 64), True),
}


def codes(generator, images, seed: int, folder: Path):
    path = folder / f"inv_seed{seed}.npz"
    if path.is_file():
        return np.load(path)["w_plus"]
    from smis_jax.inversion import invert
    cfg = TrainConfig.for_domain("shapes")
    key_inv, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
    inv = invert(generator, load_lpips().params, images, key_inv, steps=cfg.inversion_steps, lr=cfg.inversion_lr,
                 l2_lambda=cfg.inversion_l2_lambda, lpips_lambda=cfg.inversion_lpips_lambda)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, w_plus=inv.w_plus, loss=inv.loss)
    return inv.w_plus


def samples(generator, n: int, key):
    """n samples: images (n, 64, 64, 3), {taps: features} for every tap set of VARIANTS."""
    c = generator.config
    k_z, k_n = jax.random.split(key)
    w = generator.mapping(jax.random.normal(k_z, (n, c.style_dim)))
    w_plus = jnp.broadcast_to(w[:, None], (n, c.n_latent, c.style_dim))
    noise = make_noise(c, k_n, n)
    (image, features), sown = jax.jit(lambda p, w, nz: Generator(c).apply(p, w, nz, mutable=["taps"]))(
        generator.params, w_plus, noise)
    tapped = {int(k[3:]): v[0] for k, v in sown["taps"].items()}
    feats = {}
    for taps in {v[1] for v in VARIANTS.values()}:
        feats[taps] = features if taps == (64,) else labelers.combine_taps(tapped, taps)
    return np.asarray(image), feats


def summarise(rows):
    """Mean and range over seeds per (labeller, mode, shots): mIoU, accuracy, coverage, per-class IoU."""
    out = {}
    for r in rows:
        out.setdefault((r["labeler"], r["mode"], r["shots"]), []).append(r)
    summary = []
    for (name, mode, k), rs in out.items():
        def stat(vals):
            vals = [v for v in vals if v is not None]
            return {"mean": round(float(np.mean(vals)), 4), "min": round(float(np.min(vals)), 4),
                    "max": round(float(np.max(vals)), 4)} if vals else None
        s = {"labeler": name, "mode": mode, "shots": k, "seeds": [r["seed"] for r in rs],
             "miou": stat([r["miou"] for r in rs]), "accuracy": stat([r["accuracy"] for r in rs]),
             "per_class": {c: stat([r["per_class"].get(c) for r in rs]) for c in shapes.CLASS_NAMES}}
        if mode == "sparse":
            s["coverage"] = stat([r["coverage"] for r in rs])
        summary.append(s)
    return summary


def table(summary) -> str:
    """Markdown: one row per (labeller, mode, shots); mean [min, max] over seeds."""
    f = lambda s: "" if s is None else f"{s['mean']:.3f} [{s['min']:.2f}, {s['max']:.2f}]"  # noqa: E731
    g = lambda s: "-" if s is None else f"{s['mean']:.2f}"  # noqa: E731
    lines = ["| labeller | masks | shots | mIoU | accuracy | coverage | " + " | ".join(shapes.CLASS_NAMES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(shapes.CLASS_NAMES)]
    for s in sorted(summary, key=lambda s: (s["mode"], -s["shots"], list(VARIANTS).index(s["labeler"]))):
        lines.append(f"| {s['labeler']} | {s['mode']} | {s['shots']} | {f(s['miou'])} | {f(s['accuracy'])} | "
                     f"{f(s.get('coverage'))} | " + " | ".join(g(s['per_class'][c]) for c in shapes.CLASS_NAMES)
                     + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--inversions", default="/work/runs-23")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", default=None)
    p.add_argument("--figure", default=None, help="PNG: samples | oracle | each labeller's dense 5-shot labels "
                                                  "(the first seed)")
    args = p.parse_args()
    cfg = TrainConfig.for_domain("shapes")
    generator = load_generator(str(builtin.generator_path()))
    _, images, masks256 = builtin.shots(DOMAINS["shapes"], 5)
    masks64 = shapes.downsample_mask(masks256, shapes.SIZE)
    scribbles64 = np.stack([shapes.scribbles(m, i) for i, m in enumerate(masks64)])
    dense_onehot = data.onehot(masks64, N_CLASSES)
    sparse_onehot = data.onehot(scribbles64, N_CLASSES + 1)
    sample_images, sample_feats = samples(generator, args.samples, jax.random.fold_in(jax.random.key(0), 77))
    oracle = shapes.segment(sample_images)
    rows = []
    figure = {}
    for seed in args.seeds:
        w_plus = codes(generator, images, seed, Path(args.inversions))
        _, key_proto = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
        shot_feats = {taps: labelers.shot_features(generator, w_plus, key_proto, taps)
                      for taps in {v[1] for v in VARIANTS.values()}}
        reliable = labelers.reliable_pixels(generator, w_plus, key_proto, images)
        for name in args.variants:
            kind, taps, use_reliable = VARIANTS[name]
            for mode, onehot in (("dense", dense_onehot), ("sparse", sparse_onehot)):
                for k in (1, 5):
                    t = time.perf_counter()
                    lab = labelers.fit(kind, shot_feats[taps][:k], onehot[:k], mode,
                                       reliable[:k] if use_reliable else None).replace(taps=taps)
                    fit_s = time.perf_counter() - t
                    pred = np.asarray(labelers.label(sample_feats[taps], lab, topk=cfg.topk, cos_th=cfg.cos_th,
                                                     out_size=shapes.SIZE))
                    if mode == "dense":
                        s = scores(pred, oracle)
                    else:
                        s = scores(np.maximum(pred - 1, 0), oracle, pred > 0)
                        s["coverage"] = float((pred > 0).mean())
                    if seed == args.seeds[0] and mode == "dense" and k == 5:
                        figure[name] = pred[:6]
                    row = {"labeler": name, "mode": mode, "shots": k, "seed": seed, "fit_s": round(fit_s, 3), **s}
                    rows.append(row)
                    print(json.dumps({kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()}),
                          flush=True)
    if args.figure:
        cols = [[viz.to_uint8(im) for im in sample_images[:6]], [viz.colorize(o) for o in oracle[:6]]]
        cols += [[viz.colorize(p) for p in figure[name]] for name in args.variants]
        grid = viz.grid([[col[i] for col in cols] for i in range(6)], pad=2)
        viz.save_png(args.figure, np.kron(grid, np.ones((2, 2, 1), np.uint8)))
    summary = summarise(rows)
    print(table(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"samples": args.samples, "seeds": args.seeds, "summary": summary,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
