"""The figures of a run, drawn from what it wrote (``metrics.jsonl``, the inversion history, ``groundtruth.json``).

* :func:`run_curves` -> ``curves.png`` of a ``train.run`` folder (written at the end of the run, and again by the
  ground-truth evaluation with its numbers): the encoder's loss over steps, the self-consistency mIoU and (built-in
  domains, once evaluated) the ground-truth mIoU over steps, per-class self-consistency IoU, the inversion loss of
  each shot over its steps;
* :func:`gan_curves` -> ``curves.png`` of a ``train.stylegan2`` folder: losses, scores, R1, oracle quality;
* :func:`groundtruth_bars` -> ``groundtruth-iou.png``: per-class IoU of the pseudo-labels (dense/sparse, 1/5 shots)
  and of synthesis, and the mIoUs; given the results of several seeds, bars are means with the seeds' spread.

``python -m smis_jax.plots curves RUN_DIR`` redraws a run's curves; ``python -m smis_jax.plots groundtruth A.json
B.json C.json --out F.png`` draws the bars of several seeds' ``groundtruth.json``. The charts themselves are
:mod:`smis_jax.viz`'s (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smis_jax import viz
from smis_jax.config import DOMAINS

__all__ = ["read_metrics", "run_curves", "write_run_curves", "gan_curves", "groundtruth_bars", "main"]

PSEUDO_SETTINGS = (("dense_1shot", "dense 1-shot"), ("dense_5shot", "dense 5-shot"),
                   ("sparse_1shot", "sparse 1-shot"), ("sparse_5shot", "sparse 5-shot"))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line of a killed run is skipped); [] if there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _series(rows, key):
    return [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]


def _class_name(names: Sequence[str], key: str) -> str:
    return names[int(key)] if key.isdigit() and int(key) < len(names) else str(key)


def run_curves(rows: Sequence[dict[str, Any]], inversion_history: np.ndarray | None = None,
               shot_names: Sequence[str] = (), class_names: Sequence[str] = (),
               train: dict[str, Any] | None = None) -> np.ndarray:
    """``curves.png`` of a few-shot run as a uint8 image (2 columns of panels; see the module docstring).

    ``rows``: its ``metrics.jsonl`` records; ``inversion_history``: (steps, K) loss per inversion step and shot;
    ``train``: the run's resolved settings (``config.json``'s ``train``), for the losses' definitions."""
    train = train or {}
    # The ground truth's classes are the dense ones: a sparse domain's class 0 ("not annotated") is not among them.
    truth_names = class_names[1:] if class_names and class_names[0] == "not annotated" else class_names
    panels: list[viz.Line] = []
    l2_w, wn_w = train.get("l2_lambda", 1.0), train.get("w_norm_lambda", 0.0)
    losses = {"loss": _series(rows, "loss")}
    if any(r.get("loss_l2") != r.get("loss") for r in rows if "loss" in r):
        losses["W+ MSE (loss_l2)"] = _series(rows, "loss_l2")
    ylabel = f"loss = {l2_w:g}·MSE(W+)" + (f" + {wn_w:g}·WNorm" if wn_w else "")
    terms = 0
    for key, name, weight in (("loss_image", "image term (loss_image)", train.get("image_lambda", 0.0)),
                              ("loss_label", "label term (loss_label)", train.get("label_lambda", 0.0))):
        if any(key in r for r in rows):
            losses[name] = _series(rows, key)
            ylabel += f" + {weight:g}·{key[5:]}"
            terms += 1
    # The image term is ~20x below the W+ MSE: on a log axis both curves show their flattening.
    panels.append(viz.Line(losses, "encoder training loss", "step (encoder updates)",
                           ylabel + (" (log)" if terms else ""), logy=bool(terms)))

    miou = {}
    evals = [r for r in rows if "eval/miou" in r]
    if evals:
        miou["self-consistency (held-out masks)"] = _series(evals, "eval/miou")
    if any("eval/truth_miou" in r for r in evals):
        miou["ground truth: synthesis (oracle, each eval)"] = _series(evals, "eval/truth_miou")
    truth = [(r["step"], r["groundtruth"]) for r in rows if isinstance(r.get("groundtruth"), dict)]
    if truth:
        miou["ground truth: synthesis"] = [(s, g["synthesis"]["miou"]) for s, g in truth if "synthesis" in g]
        miou["ground truth: pseudo-labels, dense 5-shot"] = [
            (s, g["pseudo_labels"]["dense_5shot"]["miou"]) for s, g in truth if "pseudo_labels" in g]
    panels.append(viz.Line(miou, "mIoU over training", "step (encoder updates)", "mIoU (0-1)", markers=True,
                           ylim=(0, None)))

    for key, title, names_of in (("eval/per_class", "self-consistency IoU per class", class_names),
                                 ("eval/truth_per_class", "ground-truth IoU per class (oracle)", truth_names)):
        per_class: dict[str, list] = {}
        for r in evals:
            for k, value in (r.get(key) or {}).items():
                per_class.setdefault(str(k), []).append((r["step"], value))
        if per_class:
            names = {k: _class_name(names_of, k) for k in per_class}
            colors = None
            if names_of:
                pal = viz.palette(len(names_of))
                colors = {names[k]: pal[int(k)] for k in per_class if k.isdigit() and int(k) < len(pal)}
            panels.append(viz.Line({names[k]: v for k, v in per_class.items()}, title, "step (encoder updates)",
                                   "IoU (0-1)", markers=True, ylim=(0, None), colors=colors))

    if inversion_history is not None and len(inversion_history):
        h = np.asarray(inversion_history, np.float64)
        steps = np.arange(1, len(h) + 1)
        names = list(shot_names) if len(shot_names) == h.shape[1] else [f"shot {k}" for k in range(h.shape[1])]
        inv_l2, inv_lp = train.get("inversion_l2_lambda", 1.0), train.get("inversion_lpips_lambda", 0.8)
        panels.append(viz.Line({n: list(zip(steps, h[:, k])) for k, n in enumerate(names)},
                               "inversion of the shots", "inversion step",
                               f"loss = {inv_l2:g}·MSE + {inv_lp:g}·LPIPS (log)", logy=True, markers=False))
    return viz.charts(panels, cols=2)


def write_run_curves(run_dir: str | Path, out: str | Path | None = None, inversion=None) -> Path:
    """Draw ``run_curves`` of a ``train.run`` folder into ``out`` (default ``run_dir/curves.png``).

    ``inversion``: anything with ``history`` and ``names`` (an export's shot codes); default: the run's inversion
    cache (``inversion/*.npz``) when it holds the history."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    train = record.get("train", {})
    shot_names = list(getattr(inversion, "names", None) or record.get("shots", []))
    history = getattr(inversion, "history", None)
    if history is None and shot_names:
        history = _cached_history(run_dir / "inversion", shot_names)
    domain = DOMAINS.get(train.get("domain", ""))
    image = run_curves(read_metrics(run_dir / "metrics.jsonl"), history, shot_names,
                       domain.class_names if domain is not None else (), train)
    return viz.save_png(run_dir / "curves.png" if out is None else out, image)


def _cached_history(cache: Path, names: Sequence[str]) -> np.ndarray | None:
    """(steps, K) from the inversion cache's ``history`` arrays, if every shot has one of the same length."""
    histories = []
    for n in names:
        f = cache / f"{n}.npz"
        if not f.is_file():
            return None
        with np.load(f) as z:
            if "history" not in z:
                return None
            histories.append(np.asarray(z["history"]))
    if len({len(h) for h in histories}) != 1:
        return None
    return np.stack(histories, 1)


def gan_curves(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """``curves.png`` of a GAN run (its ``metrics.jsonl`` records) as a uint8 image; x is kimg (thousands of real
    images shown to the discriminator)."""
    def by_kimg(key):
        return [(r["kimg"], r[key]) for r in rows if key in r and "kimg" in r]

    panels = [
        viz.Line({"D: softplus(D(fake)) + softplus(-D(real))": by_kimg("loss_d"),
                  "G: softplus(-D(fake))": by_kimg("loss_g")},
                 "non-saturating logistic losses", "kimg (thousands of real images)", "loss (nats)"),
        viz.Line({"D(real)": by_kimg("real_score"), "D(fake)": by_kimg("fake_score")},
                 "discriminator scores", "kimg (thousands of real images)", "mean logit"),
        viz.Line({"R1 penalty": by_kimg("r1")}, "R1 (on the steps it runs)", "kimg (thousands of real images)",
                 "E‖∇ₓD(real)‖² (before γ/2)"),
    ]
    quality = {k.removeprefix("quality/"): by_kimg(k) for k in ("quality/oracle_confidence", "quality/class_freq_tv",
                                                                 "quality/layout_agreement")}
    if any(quality.values()):
        panels.append(viz.Line(quality, "EMA samples seen by the oracle", "kimg (thousands of real images)",
                               "share (0-1)", markers=True))
    return viz.charts(panels, cols=2)


def groundtruth_bars(results: dict[str, Any] | Sequence[dict[str, Any]]) -> np.ndarray:
    """The ground-truth evaluation (``groundtruth.json``) as bars; several results (one per seed) give each bar's
    mean, the seeds' min..max and a dot per seed."""
    results = [results] if isinstance(results, dict) else list(results)
    if not results:
        raise ValueError("groundtruth_bars needs at least one result")
    classes = list(results[0]["pseudo_labels"]["dense_5shot"]["per_class"])
    synth_keys = [k for k in results[0] if k.startswith("synthesis")]

    def values(*path):
        """The value at ``path`` in each result that has it: one number, or a list of them (one per seed)."""
        found = []
        for r in results:
            for key in path:
                r = r.get(key) if isinstance(r, dict) else None
            if r is not None:
                found.append(r)
        return found[0] if len(found) == 1 else found

    pseudo = {c: {label: values("pseudo_labels", key, "per_class", c) for key, label in PSEUDO_SETTINGS}
              for c in classes}
    synth = {c: {k.replace("_", ", "): values(k, "per_class", c) for k in synth_keys} for c in classes}
    summary = {label: {"mIoU": values("pseudo_labels", key, "miou")} for key, label in PSEUDO_SETTINGS}
    summary.update({k.replace("_", ", "): {"mIoU": values(k, "miou")} for k in synth_keys})
    seeds = f" ({len(results)} seeds)" if len(results) > 1 else ""
    drop_empty = lambda rows: {c: {k: v for k, v in row.items() if v != []} for c, row in rows.items()}  # noqa: E731
    panels = [viz.Bars(drop_empty(pseudo), f"pseudo-labels vs the oracle, per class{seeds}", "IoU (0-1)"),
              viz.Bars(drop_empty(synth), f"synthesis from held-out masks, per class{seeds}", "IoU (0-1)"),
              viz.Bars(drop_empty(summary), f"mean IoU{seeds}", "mIoU (0-1)", values=True)]
    return viz.charts(panels, cols=1, panel_size=(10.4, 3.2),
                      title=f"ground truth, {results[0].get('domain', '')} (step {results[0].get('step', '?')})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smis_jax.plots", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves", help="redraw RUN_DIR/curves.png (a train.run or a train.stylegan2 folder)")
    c.add_argument("run_dir")
    c.add_argument("--out", help="default: RUN_DIR/curves.png")
    g = sub.add_parser("groundtruth", help="bars of one or several (seeds') groundtruth.json")
    g.add_argument("results", nargs="+")
    g.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.what == "curves":
        run = Path(args.run_dir)
        record = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else None
        if record is None:
            print(f"error: {run}: not a run folder (no config.json)", file=sys.stderr)
            return 2
        if "gan" in record:
            out = viz.save_png(args.out or run / "curves.png", gan_curves(read_metrics(run / "metrics.jsonl")))
        else:
            out = write_run_curves(run, args.out)
    else:
        loaded = []
        for f in args.results:
            try:
                loaded.append(json.loads(Path(f).read_text()))
            except (OSError, ValueError) as e:
                print(f"error: {f}: cannot be read as JSON ({e})", file=sys.stderr)
                return 2
            if not isinstance(loaded[-1], dict) or "pseudo_labels" not in loaded[-1]:
                print(f"error: {f}: not a groundtruth.json (no 'pseudo_labels')", file=sys.stderr)
                return 2
        out = viz.save_png(args.out, groundtruth_bars(loaded))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
