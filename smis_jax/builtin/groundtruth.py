"""The paper's evaluation on ground truth, for the built-in domains (exact masks and an oracle segmenter).

``evaluate(export_dir)`` reads the export of a ``train.run`` on a built-in domain (a copied export is enough) and
measures:

* **pseudo-label quality** (of the run's ``--labeler``): the pseudo-labels of N generated samples against the oracle's segmentation of the
  same samples (mIoU, pixel accuracy), with prototypes from 1 and 5 shots, dense (the masks) and sparse (scribbles
  of the same shots; sparse labels cover few pixels, so their accuracy is measured where they label and their
  coverage is reported beside it);
* **synthesis quality** (the paper's protocol): held-out masks -> encoder -> generator -> oracle, mIoU and accuracy
  against the dense truth of those masks, with the stored noise and with 4 style seeds (multi-modal mixing);
* **inversion quality**: MSE, PSNR and LPIPS of the shots re-rendered from their inverted codes, and the loss curve;
* **bfloat16**: how often labels from a bfloat16 generator agree with float32 ones (dense 5-shot and sparse);
* **refinement** (only when asked, ``refine_steps``; :func:`refinement`): synthesis mIoU and accuracy of the held-out
  masks after the original's and our W+ refinement (:mod:`smis_jax.refine`) at each step count, the time per mask
  (batched) and the LPIPS distance from the unrefined image, with a before/after figure ``refinement.png``.

It writes ``groundtruth.json``, appends the numbers to ``metrics.jsonl``, and draws ``groundtruth.png`` (test mask |
synthesis | its oracle segmentation; sample | oracle | pseudo-label), ``groundtruth-iou.png`` (per-class IoU bars,
``plots.groundtruth_bars``) and ``curves.png`` (``plots.run_curves``: training loss, self-consistency and
ground-truth mIoU over steps, the inversion loss per shot).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin, data, export, labelers, labeling, plots, refine, synthesize, viz
from smis_jax.builtin import shapes
from smis_jax.config import DOMAINS, ConfigError
from smis_jax.inversion import invert_cached
from smis_jax.io import load_lpips
from smis_jax.metrics import confusion, iou_from_confusion
from smis_jax.nets import lpips, stylegan2

__all__ = ["evaluate", "refinement", "scores", "format_table"]

N_CLASSES = len(shapes.CLASS_NAMES)


def scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
    """mIoU (classes present in truth or prediction), pixel accuracy and per-class IoU of class-id maps."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    conf = confusion(pred, truth, N_CLASSES)
    out = iou_from_confusion(conf, ignore_background=False)
    out["per_class"] = {shapes.CLASS_NAMES[c]: round(v, 4) for c, v in out["per_class"].items()}
    out["accuracy"] = float(np.trace(conf) / max(conf.sum(), 1))
    return out


@partial(jax.jit, static_argnames=("config", "n", "dtype", "taps"))
def _samples(config, params, key, n: int, dtype, taps=(64,)):
    """n generated samples (image (n, S, S, 3) float32, features (n, 64, 64, C) float32), computed in ``dtype``;
    the features are those a labeller reading ``taps`` sees (:func:`labelers.label_features`)."""
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)  # noqa: E731
    k_z, k_n = jax.random.split(key)
    gen = stylegan2.Generator(config)
    w = gen.apply(cast(params), jax.random.normal(k_z, (n, config.style_dim)).astype(dtype),
                  method=stylegan2.Generator.mapping)
    w_plus = jnp.broadcast_to(w[:, None], (n, config.n_latent, config.style_dim))
    if tuple(taps) == (64,):
        image, features = gen.apply(cast(params), w_plus, cast(stylegan2.make_noise(config, k_n, n)))
    else:
        (image, features), sown = gen.apply(cast(params), w_plus, cast(stylegan2.make_noise(config, k_n, n)),
                                            mutable=["taps"])
        tapped = {int(k[3:]): v[0] for k, v in sown["taps"].items()}
        features = labelers.combine_taps(tapped, tuple(taps))
    return image.astype(jnp.float32), features.astype(jnp.float32)


def _sparse_pred(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse pseudo-labels (0 = none, c + 1 = class c) -> (class ids, labelled mask)."""
    return np.maximum(labels.astype(np.int64) - 1, 0), labels > 0


def _pseudo_label_quality(kind, features_shots, masks64, scribbles64, sample_features, oracle, topk, cos_th,
                          reliable=None):
    """The labeller ``kind`` fitted on 1 and 5 shots (``features_shots``: its features of the shots; ``reliable``:
    the pixels it fits on, as training does), dense and sparse, scored on the samples against the oracle."""
    rel = (lambda k: None) if reliable is None else (lambda k: reliable[:k])  # noqa: E731
    out = {}
    dense_onehot = data.onehot(masks64, N_CLASSES)
    sparse_onehot = data.onehot(scribbles64, N_CLASSES + 1)
    for k in (1, 5):
        protos = labelers.fit(kind, features_shots[:k], dense_onehot[:k], mode="dense", reliable=rel(k))
        pred = np.asarray(labelers.label(sample_features, protos, out_size=shapes.SIZE))
        out[f"dense_{k}shot"] = scores(pred, oracle)
        protos = labelers.fit(kind, features_shots[:k], sparse_onehot[:k], mode="sparse", reliable=rel(k))
        labels = np.asarray(labelers.label(sample_features, protos, topk=topk, cos_th=cos_th,
                                           out_size=shapes.SIZE))
        pred, labelled = _sparse_pred(labels)
        s = scores(pred, oracle, labelled)
        s["coverage"] = float(labelled.mean())
        out[f"sparse_{k}shot"] = s
    return out


def _bf16_agreement(generator, protos_dense, protos_sparse, key, n, topk, cos_th, taps) -> dict[str, float]:
    _, f32 = _samples(generator.config, generator.params, key, n, jnp.float32, taps)
    _, bf16 = _samples(generator.config, generator.params, key, n, jnp.bfloat16, taps)
    out = {}
    for name, protos, kw in (("dense", protos_dense, {}), ("sparse", protos_sparse, {"topk": topk, "cos_th": cos_th})):
        a = np.asarray(labelers.label(f32, protos, out_size=shapes.SIZE, **kw))
        b = np.asarray(labelers.label(bf16, protos, out_size=shapes.SIZE, **kw))
        out[name] = float((a == b).mean())
    return out


def _synthesis_quality(pipeline, labels256, truth64, styles: int, seed: int, batch: int = 8, lpips_params=None):
    """Held-out masks -> images -> oracle, against the dense truth; returns (scores, scores with styles, images).

    With ``lpips_params`` the styles' scores also hold ``diversity``: the mean LPIPS between every two of a mask's
    ``styles`` variants (the diversity score of semantic image synthesis papers), averaged over the masks."""
    n_classes = pipeline.encoder.config.input_nc
    preds, preds_styles, images, diversity = [], [], [], []
    key = jax.random.key(seed)
    for start in range(0, len(labels256), batch):
        chunk = labels256[start:start + batch]
        pad = batch - len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
        codes, offsets = synthesize.encode_with_offsets(pipeline,
                                                        labeling.labels_to_onehot(jnp.asarray(chunk), n_classes))
        image = np.asarray(synthesize.decode(pipeline, codes, key, first_index=start, offsets=offsets))[: batch - pad]
        multi = np.asarray(synthesize.decode(pipeline, codes, key, styles=styles, first_index=start,
                                             offsets=offsets))[: batch - pad]
        images.append(image)
        step = image.shape[1] // shapes.SIZE  # the 256 output is the 64 px image repeated 4x4
        preds.append(shapes.segment(image[:, ::step, ::step]))
        preds_styles.append(shapes.segment(multi[:, :, ::step, ::step]))
        if lpips_params is not None and styles > 1:
            pairs = [(i, j) for i in range(styles) for j in range(i + 1, styles)]
            a = jnp.asarray(multi[:, [i for i, _ in pairs]].reshape(-1, *multi.shape[2:]))
            b = jnp.asarray(multi[:, [j for _, j in pairs]].reshape(-1, *multi.shape[2:]))
            diversity.append(np.asarray(lpips.lpips_distance_jit(lpips_params, a, b)))
    preds, preds_styles = np.concatenate(preds), np.concatenate(preds_styles)
    multi_truth = np.repeat(truth64[:, None], styles, 1)
    multi_scores = scores(preds_styles, multi_truth)
    if diversity:
        multi_scores["diversity_lpips"] = float(np.concatenate(diversity).mean())
    return scores(preds, truth64), multi_scores, np.concatenate(images)


EMPTY_CANVAS_CLASSES = ("sky", "grass", "water")


def _empty_canvas(pipeline, n_classes_mask: int, sparse: bool) -> dict[str, float]:
    """Does a canvas of one class mean that class? For each class of ``EMPTY_CANVAS_CLASSES``, a mask painted
    with it alone -> image (stored noise) -> the oracle's fraction of pixels of that class."""
    out = {}
    for name in EMPTY_CANVAS_CLASSES:
        c = shapes.CLASS_NAMES.index(name)
        mask = np.full((1, 256, 256), c + (1 if sparse else 0), np.int32)
        codes, offsets = synthesize.encode_with_offsets(pipeline,
                                                        labeling.labels_to_onehot(jnp.asarray(mask), n_classes_mask))
        image = np.asarray(synthesize.decode(pipeline, codes, jax.random.key(0), offsets=offsets))
        step = image.shape[1] // shapes.SIZE
        out[name] = float(np.mean(shapes.segment(image[:, ::step, ::step]) == c))
    return out


def evaluate(export_dir: str | Path | export.RunExport, report_dir: str | Path | None = None,
             run_dir: str | Path | None = None,
             n_samples: int = 256, styles: int = 4, seed: int = 0,
             log: Callable[[str], None] = print, refine_steps: Sequence[int] | None = None) -> dict[str, Any]:
    """Ground-truth evaluation of a built-in-domain export (see the module docstring).

    ``report_dir``: where ``groundtruth.json``/``.png`` and ``curves.png`` go (None: nowhere, the result is
    returned). ``run_dir``: the training run the export came from, when at hand: its ``metrics.jsonl`` gets the
    result and draws the training curves, and its inversion cache serves exports that carry no shot codes.
    ``refine_steps``: also measure every refinement at these step counts (:func:`refinement`; minutes)."""
    run_export = export_dir if isinstance(export_dir, export.RunExport) else export.load(export_dir)
    run, train = run_export.run, run_export.run["train"]
    domain = DOMAINS.get(run.get("domain", train["domain"]))
    if domain is None or not domain.builtin:
        raise ConfigError(f"{run_export.path}: ground-truth evaluation needs a built-in domain, not "
                          f"'{train['domain']}'")
    pipeline = run_export.pipeline
    # The run's generator as it was loaded for training (its truncation latent is the export's latent_avg row).
    g = pipeline.generator
    generator = stylegan2.LoadedGenerator(g.config, g.params, g.noises, np.asarray(pipeline.latent_avg)[0])
    topk, cos_th = int(train["topk"]), float(train["cos_th"])
    kind = train.get("labeler", "paper")  # runs from before --labeler: the paper's
    taps = labelers.taps_of(kind, g.config)

    # The five shots' codes: the export's, or inverted again (cached in the run folder when there is one).
    names, images, masks256 = builtin.shots(DOMAINS["shapes"], 5)
    masks64 = shapes.downsample_mask(masks256, shapes.SIZE)
    scribbles64 = np.stack([shapes.scribbles(m, i) for i, m in enumerate(masks64)])
    lpips_params = load_lpips().params
    key = jax.random.key(int(train["seed"]))
    key_inv, key_proto = jax.random.split(jax.random.fold_in(key, 1))
    inv = run_export.shots
    if inv is None or tuple(inv.names) != tuple(names):
        # Cached inside the run folder, else inside the export folder (never the current folder); an export that
        # cannot be written to is inverted in a temporary folder.
        cache = (Path(run_dir) if run_dir is not None else Path(run_export.path)) / "inversion"
        with tempfile.TemporaryDirectory(prefix="smis-inversion-") as scratch:
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError:
                cache = Path(scratch)
            inv = invert_cached(cache, names, generator, lpips_params, images, key_inv, log=log,
                                steps=int(train["inversion_steps"]), lr=float(train["inversion_lr"]),
                                l2_lambda=float(train["inversion_l2_lambda"]),
                                lpips_lambda=float(train["inversion_lpips_lambda"]))
    recon, features_shots = generator.synthesize(jnp.asarray(inv.w_plus), noise="const")
    recon = np.asarray(recon)
    mse = np.mean((recon - images) ** 2, axis=(1, 2, 3))
    lp = np.asarray(lpips.lpips_distance(lpips_params, jnp.asarray(recon), jnp.asarray(images)))
    inversion = {"mse": float(mse.mean()), "psnr_db": float(np.mean(10 * np.log10(4.0 / mse))),
                 "lpips": float(lp.mean()), "per_shot_psnr_db": [round(float(10 * np.log10(4.0 / m)), 2) for m in mse]}
    # Prototypes as the run builds them (features of the inverted codes under one seeded noise draw).
    features_shots = labelers.shot_features(generator, inv.w_plus, key_proto, taps)
    reliable = None if kind == "paper" else labelers.reliable_pixels(generator, inv.w_plus, key_proto, images)

    key_samples = jax.random.fold_in(key, 77)
    sample_images, sample_features = _samples(generator.config, generator.params, key_samples, n_samples,
                                              jnp.float32, taps)
    sample_images = np.asarray(sample_images)
    oracle = shapes.segment(sample_images)
    pseudo = _pseudo_label_quality(kind, features_shots, masks64, scribbles64, sample_features, oracle,
                                   topk, cos_th, reliable)

    protos_dense = labelers.fit(kind, features_shots, data.onehot(masks64, N_CLASSES), mode="dense",
                                reliable=reliable)
    protos_sparse = labelers.fit(kind, features_shots, data.onehot(scribbles64, N_CLASSES + 1), mode="sparse",
                                 reliable=reliable)
    bf16 = _bf16_agreement(generator, protos_dense, protos_sparse, key_samples, min(n_samples, 128), topk, cos_th,
                           taps)

    test_names, test_labels, truth64 = builtin.test_masks(domain)
    synth, synth_styles, synth_images = _synthesis_quality(pipeline, test_labels, truth64, styles, seed,
                                                           lpips_params=lpips_params)
    empty = _empty_canvas(pipeline, pipeline.encoder.config.input_nc, domain.mode == "sparse")

    result = {
        "domain": domain.name, "labeler": kind, "step": int(run.get("step", pipeline.config.get("opts", {}).get("steps", -1))),
        "shots": list(names), "n_samples": n_samples, "n_test_masks": len(test_names),
        "generator_oracle_confidence": shapes.oracle_confidence(sample_images),
        "pseudo_labels": pseudo, "synthesis": synth, f"synthesis_{styles}styles": synth_styles,
        "inversion": inversion, "bf16_agreement": bf16, "empty_canvas": empty,
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
    }
    if refine_steps:
        result["refinement"] = refinement(run_export, refine_steps, report_dir=report_dir, log=log)
    if run_dir is not None:
        with open(Path(run_dir) / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": result["step"], "groundtruth": result}) + "\n")
    if report_dir is None:
        return result
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "groundtruth.json").write_text(json.dumps(result, indent=1))
    pseudo_dense = np.asarray(labelers.label(sample_features[:8], protos_dense, out_size=shapes.SIZE))
    rows = [[viz.colorize(t), viz.to_uint8(im[::4, ::4]), viz.colorize(shapes.segment(im[::4, ::4]))]
            for t, im in zip(truth64[:8], synth_images[:8])]
    rows += [[viz.to_uint8(im), viz.colorize(o), viz.colorize(p)]
             for im, o, p in zip(sample_images[:8], oracle[:8], pseudo_dense)]
    figure = viz.grid([sum((r for r in rows[i::8]), []) for i in range(8)], pad=2)
    viz.save_png(report_dir / "groundtruth.png", np.kron(figure, np.ones((2, 2, 1), np.uint8)))
    viz.save_png(report_dir / "groundtruth-iou.png", plots.groundtruth_bars(result))
    # The run's curves with this result's ground-truth mIoU (a copied export alone: this result and the inversion).
    rows = (plots.read_metrics(Path(run_dir) / "metrics.jsonl") if run_dir is not None
            else [{"step": result["step"], "groundtruth": result}])
    viz.save_png(report_dir / "curves.png", plots.run_curves(rows, getattr(inv, "history", None), names,
                                                             run.get("class_names", ()), train))
    return result


def refinement(export_dir: str | Path | export.RunExport, steps: Sequence[int] = (0, 10, 50, 200),
               methods: Sequence[str] = refine.METHODS, batch: int = 16, report_dir: str | Path | None = None,
               log: Callable[[str], None] = print, n_masks: int | None = None, **overrides) -> dict[str, Any]:
    """Every refinement method on the domain's held-out masks, measured against their dense truth (the oracle segments the
    refined images). Per method and step count: mIoU, accuracy, seconds per mask (``batch`` masks per call, after a
    compile; each step count is its own timed run from the encoder's codes) and the LPIPS distance of the refined
    image from the unrefined one (both 64 px). ``overrides``: :class:`smis_jax.refine.Options` fields for every
    method (e.g. ``lr``). Writes ``refinement.png`` (mask | unrefined | each method at its last step count) to
    ``report_dir`` when given."""
    run_export = export_dir if isinstance(export_dir, export.RunExport) else export.load(export_dir)
    domain = DOMAINS.get(run_export.run.get("domain", run_export.run["train"]["domain"]))
    if domain is None or not domain.builtin:
        raise ConfigError(f"{run_export.path}: ground-truth refinement rows need a built-in domain")
    pipeline, gen = run_export.pipeline, run_export.pipeline.generator
    protos, sparse = refine.prototypes_for(run_export)
    run_labeler = labelers.as_labeler(run_export.prototypes)
    _, labels256, truth64 = builtin.test_masks(domain)
    if n_masks is not None:
        labels256, truth64 = labels256[:n_masks], truth64[:n_masks]
    n = len(labels256) - len(labels256) % batch or len(labels256)
    labels256, truth64 = labels256[:n], truth64[:n]
    chunks = [slice(i, min(i + batch, n)) for i in range(0, n, batch)]
    n_classes = pipeline.encoder.config.input_nc
    encoded = [synthesize.encode_with_offsets(pipeline, labeling.labels_to_onehot(jnp.asarray(labels256[c]),
                                                                                   n_classes)) for c in chunks]
    w0 = [codes + pipeline.latent_avg for codes, _ in encoded]
    offsets0 = [offsets for _, offsets in encoded]  # an offset head's (None for pSp's encoder)
    lpips_params = load_lpips().params

    def image64(w, offsets=None):
        image = np.asarray(refine.render(gen, w, gen.config.size, offsets))
        step = image.shape[1] // shapes.SIZE
        return image[:, ::step, ::step]

    base = np.concatenate([image64(w, o) for w, o in zip(w0, offsets0)])
    out: dict[str, Any] = {"n_masks": n, "batch": batch, "device": jax.devices()[0].device_kind,
                           "unrefined": scores(shapes.segment(base), truth64)}
    figure_cols = {"unrefined": base[:8]}
    for method in methods:
        rows = {}
        for k in steps:
            options = refine.default_options(method, int(k), **overrides)
            # compile (every step count <= 256 shares it)
            refine.refine(gen, protos, w0[0], labels256[chunks[0]], dataclasses.replace(options, steps=1),
                          sparse=sparse, labeler=run_labeler, offsets=offsets0[0]).w_plus.block_until_ready()
            t0 = time.perf_counter()
            results = [refine.refine(gen, protos, w, labels256[c], options, sparse=sparse, labeler=run_labeler,
                                     offsets=o) for w, o, c in zip(w0, offsets0, chunks)]
            jax.block_until_ready([r.w_plus for r in results])
            seconds = (time.perf_counter() - t0) / n
            images = np.concatenate([image64(r.w_plus, r.offsets) for r in results])
            s = scores(shapes.segment(images), truth64)
            dist = np.asarray(lpips.lpips_distance(lpips_params, jnp.asarray(images), jnp.asarray(base)))
            loss = np.concatenate([r.losses for r in results])
            rows[str(k)] = {"miou": s["miou"], "accuracy": s["accuracy"], "per_class": s["per_class"],
                            "seconds_per_mask": seconds,
                            "lpips_from_unrefined": float(dist.mean()), "loss_first": float(loss[:, 0].mean()),
                            "loss_last": float(loss[:, -1].mean())}
            log(f"refine {method} {k} steps: mIoU {s['miou']:.3f}, accuracy {s['accuracy']:.3f}, "
                f"{seconds:.3f} s/mask, LPIPS from unrefined {dist.mean():.3f}")
            figure_cols[f"{method} {k}"] = images[:8]
        chosen = refine.default_options(method, None, **overrides)
        out[method] = {"options": {**dataclasses.asdict(chosen), "scorer": refine.resolve_scorer(chosen, run_labeler)},
                       "steps": rows}
    if report_dir is not None:
        keep = ["unrefined"] + [f"{m} {steps[-1]}" for m in methods]
        big = lambda a: np.kron(a, np.ones((2, 2, 1), np.uint8))  # noqa: E731
        rows = [[big(viz.colorize(truth64[i]))] + [big(viz.to_uint8(figure_cols[k][i])) for k in keep]
                for i in range(min(8, n))]
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        viz.save_png(Path(report_dir) / "refinement.png", viz.titled_grid(rows, ["mask"] + keep, pad=2))
        (Path(report_dir) / "refinement.json").write_text(json.dumps(out, indent=1))
    return out


def _plot_curves(out_dir: Path, metrics_file: Path | None, inv) -> None:
    series = {}
    rows = ([json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
            if metrics_file is not None and metrics_file.is_file() else [])
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    miou = [(r["step"], r["eval/miou"]) for r in rows if "eval/miou" in r]
    if loss:
        series["encoder W+ loss"] = loss
    if miou:
        series["self-consistency mIoU"] = miou
    panels = [viz.plot(series[k], title=k) for k in series]
    history = getattr(inv, "history", None)
    if history is not None and len(history):
        panels.append(viz.plot([(i + 1, float(v)) for i, v in enumerate(np.asarray(history).mean(1))],
                               title="inversion loss (mean of shots)"))
    if panels:
        viz.save_png(out_dir / "curves.png", viz.grid([panels], pad=4))


def format_table(result: dict[str, Any]) -> str:
    lines = [f"ground truth, {result['domain']} (step {result['step']}; {result['n_samples']} samples, "
             f"{result['n_test_masks']} held-out masks)", "", "| measure | mIoU | accuracy | note |", "|---|---|---|---|"]
    for name, s in result["pseudo_labels"].items():
        note = f"coverage {s['coverage']:.3f}" if "coverage" in s else ""
        lines.append(f"| pseudo-labels {name.replace('_', ' ')} | {s['miou']:.3f} | {s['accuracy']:.3f} | {note} |")
    for key in [k for k in result if k.startswith("synthesis")]:
        s = result[key]
        note = f"diversity (LPIPS between variants) {s['diversity_lpips']:.3f}" if "diversity_lpips" in s else ""
        lines.append(f"| {key.replace('_', ' ')} | {s['miou']:.3f} | {s['accuracy']:.3f} | {note} |")
    if "empty_canvas" in result:
        lines.append("| a canvas of one class | | | " + ", ".join(
            f"all-{k}: {v:.2f} {k}" for k, v in result["empty_canvas"].items()) + " |")
    inv = result["inversion"]
    lines.append(f"| inversion of the shots | | | PSNR {inv['psnr_db']:.1f} dB, LPIPS {inv['lpips']:.3f}, "
                 f"MSE {inv['mse']:.4f} |")
    b = result["bf16_agreement"]
    lines.append(f"| bfloat16 label agreement | | | dense {b['dense']:.4f}, sparse {b['sparse']:.4f} |")
    lines.append(f"| generator: oracle confidence | | | {result['generator_oracle_confidence']:.3f} |")
    if "refinement" in result:
        lines += ["", format_refinement(result["refinement"])]
    return "\n".join(lines)


def format_refinement(rows: dict[str, Any]) -> str:
    """:func:`refinement`'s result as a markdown table."""
    u = rows["unrefined"]
    lines = [f"refinement of {rows['n_masks']} held-out masks ({rows['batch']} per call, {rows['device']})", "",
             "| method | steps | synthesis mIoU | accuracy | s / mask | LPIPS from unrefined |", "|---|---|---|---|---|---|",
             f"| none | | {u['miou']:.3f} | {u['accuracy']:.3f} | | |"]
    for method in refine.METHODS:
        for k, r in rows.get(method, {}).get("steps", {}).items():
            lines.append(f"| {method} | {k} | {r['miou']:.3f} | {r['accuracy']:.3f} | {r['seconds_per_mask']:.3f} | "
                         f"{r['lpips_from_unrefined']:.3f} |")
    return "\n".join(lines)
