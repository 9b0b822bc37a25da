"""The built-in main job over several seeds, and the spread of every ground-truth figure.

    python -m smis_jax.builtin.sweep --domain shapes --seeds 0,1,2 --workdir runs/sweep [--samples 256] [train.run flags]

For each seed S: ``python -m train.run --domain D --seed S --workdir WORKDIR/seed-S [flags]``, then
``python -m smis_jax.evaluate --workdir WORKDIR/seed-S`` (the ground-truth evaluation, ``groundtruth.json``). The
seed is the run's: it draws the shots' inversion (starting codes and noise), the prototypes' noise, the encoder's
initial weights and training samples, and the evaluation's generated samples; the shots, the held-out masks and the
generator are the same in every run. Other flags go to train.run unchanged (e.g. ``--max-steps 500``).

``--at-step N`` also evaluates every seed's checkpoint of step N (``evaluate --workdir WORKDIR/seed-S --step N``,
its report in ``WORKDIR/seed-S/step-N/``) and writes that step's spread to ``WORKDIR/step-N/``: training is
deterministic and its learning rate constant, so that is what runs of N steps give, without training them.

Resumable per seed: a seed whose ``groundtruth.json`` exists is skipped; one with an export but no evaluation is
only evaluated; one with a ``config.json`` but no export is continued with ``--resume``; otherwise it starts
afresh. Each seed's output goes to ``WORKDIR/seed-S.log``.

Writes ``WORKDIR/sweep.json`` (per row of groundtruth.json, per-class IoU included: the values per seed, mean,
standard deviation (n - 1), min and max) and ``WORKDIR/sweep.md`` (the same as a markdown table, mean +- sd and
range, seeds named) and ``WORKDIR/sweep.png`` (per-class bars: mean, min..max, a dot per seed). The runs' curves
over training go to ``sweep.json``'s ``curves`` and ``WORKDIR/sweep-curves.png``: at every evaluation step, the
ground truth's synthesis mIoU (built-in domains score the held-out masks with the oracle while training) and
self-consistency, per seed and their mean, and the training loss terms per seed: where the mean flattens, more
steps stop paying.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from smis_jax import plots, viz
from smis_jax.config import DOMAINS

__all__ = ["flatten", "spread", "curves", "format_markdown", "main"]

# metrics.jsonl keys drawn over training: (key, name)
CURVES = (("eval/truth_miou", "ground truth: synthesis mIoU (held-out masks, oracle)"),
          ("eval/miou", "self-consistency mIoU (held-out masks)"),
          ("loss_l2", "W+ MSE"), ("loss_image", "image term"))

# groundtruth.json keys that are run facts, not measurements
_NOT_MEASURES = {"domain", "step", "shots", "n_samples", "n_test_masks", "matmul_precision", "per_shot_psnr_db"}


def flatten(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """groundtruth.json -> {'pseudo_labels/dense_5shot/miou': v, 'pseudo_labels/dense_5shot/per_class/sky': v, ...}
    (numbers only; run facts such as the step and the sample count left out)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in _NOT_MEASURES:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def spread(results: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{seed: groundtruth.json} -> {row: {'values': {seed: v}, 'mean', 'sd', 'min', 'max', 'n'}}, rows in the order
    of the first result; a row missing from a run (a class never seen) is counted over the runs that have it."""
    flat = {seed: flatten(r) for seed, r in results.items()}
    rows: list[str] = []
    for f in flat.values():
        rows += [k for k in f if k not in rows]
    out = {}
    for row in rows:
        values = {seed: f[row] for seed, f in flat.items() if row in f and math.isfinite(f[row])}
        if not values:
            continue
        v = list(values.values())
        mean = sum(v) / len(v)
        sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
        out[row] = {"values": values, "mean": mean, "sd": sd, "min": min(v), "max": max(v), "n": len(v)}
    return out


def curves(runs: dict[int, Path]) -> dict[str, dict[str, Any]]:
    """{seed: run folder} -> {key: {'name', 'steps': {step: {'values': {seed: v}, 'mean', 'min', 'max', 'n'}}}} of
    :data:`CURVES` from each run's ``metrics.jsonl`` (a key no run logged is left out; a step counts the seeds that
    logged it)."""
    rows = {seed: plots.read_metrics(Path(run) / "metrics.jsonl") if (Path(run) / "metrics.jsonl").is_file() else []
            for seed, run in runs.items()}
    out: dict[str, dict[str, Any]] = {}
    for key, name in CURVES:
        by_step: dict[int, dict[int, float]] = {}
        for seed, lines in rows.items():
            for r in lines:
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]):
                    by_step.setdefault(int(r["step"]), {})[seed] = float(r[key])
        if by_step:
            out[key] = {"name": name, "steps": {
                step: {"values": v, "mean": sum(v.values()) / len(v), "min": min(v.values()), "max": max(v.values()),
                       "n": len(v)} for step, v in sorted(by_step.items())}}
    return out


def _curves_figure(found: dict[str, dict[str, Any]], seeds: Sequence[int]):
    """Two panels: the ground truth per seed and its mean beside self-consistency's mean; the loss terms' means."""
    def mean(key):
        return [(s, v["mean"]) for s, v in found[key]["steps"].items()]

    panels = []
    series: dict[str, list] = {}
    if "eval/truth_miou" in found:
        series["ground truth (mean)"] = mean("eval/truth_miou")
        if len(seeds) > 1:
            for seed in seeds:
                series[f"ground truth, seed {seed}"] = [(s, v["values"][seed]) for s, v in
                                                        found["eval/truth_miou"]["steps"].items() if seed in v["values"]]
    if "eval/miou" in found:
        series["self-consistency (mean)"] = mean("eval/miou")
    if series:
        panels.append(viz.Line(series, f"held-out synthesis mIoU, {len(seeds)} seeds", "step (encoder updates)",
                               "mIoU (0-1)", ylim=(0, None)))
    losses = {name: mean(key) for key, name in (("loss_l2", "W+ MSE"), ("loss_image", "image term")) if key in found}
    if losses:
        panels.append(viz.Line(losses, f"training loss terms (mean of {len(seeds)} seeds)", "step (encoder updates)",
                               "loss (log)", logy=True, markers=False))
    return viz.charts(panels, cols=len(panels)) if panels else None


def format_markdown(rows: dict[str, dict[str, Any]], seeds: Sequence[int], title: str) -> str:
    lines = [title, "", f"mean +- sd (n - 1) over seeds {', '.join(map(str, seeds))}; range = min .. max", "",
             "| measure | mean +- sd | range | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for name, r in rows.items():
        per_seed = " | ".join(f"{r['values'][s]:.4f}" if s in r["values"] else "-" for s in seeds)
        sd = "" if math.isnan(r["sd"]) else f" +- {r['sd']:.4f}"
        lines.append(f"| {name} | {r['mean']:.4f}{sd} | {r['min']:.4f} .. {r['max']:.4f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds, got {text!r}")
    return seeds


def _run(cmd: list[str], log: Path) -> int:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smis_jax.builtin.sweep", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # --seed is not --seeds
    builtin_domains = [name for name, d in DOMAINS.items() if d.builtin]
    parser.add_argument("--domain", required=True, choices=builtin_domains)
    parser.add_argument("--seeds", type=_seeds, required=True, help="comma-separated run seeds, e.g. 0,1,2")
    parser.add_argument("--workdir", required=True, help="the sweep's folder: one run folder per seed inside")
    parser.add_argument("--samples", type=int, help="ground-truth evaluation's generated samples (default 256)")
    parser.add_argument("--at-step", type=int, metavar="N",
                        help="also evaluate every seed's checkpoint of step N (evaluate --workdir --step N; a run "
                             "of N steps is the longer run's prefix) and write its spread to WORKDIR/step-N/")
    args, train_flags = parser.parse_known_args(argv)
    if args.at_step is not None and args.at_step < 1:
        parser.error(f"--at-step must be a step >= 1, got {args.at_step}")
    for flag in ("--seed", "--workdir", "--domain", "--resume"):
        if any(a == flag or a.startswith(flag + "=") for a in train_flags):
            parser.error(f"{flag} is the sweep's to set (per seed), not a train.run flag to pass")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        run_dir = workdir / f"seed-{seed}"
        truth = run_dir / "groundtruth.json"
        if truth.is_file():
            print(f"seed {seed}: finished ({truth}), skipped", file=sys.stderr)
        else:
            log = workdir / f"seed-{seed}.log"  # beside the run folder: train.run wants that one new or its own
            start = time.time()
            if not (run_dir / "export" / "config.json").is_file():
                resume = ["--resume"] if (run_dir / "config.json").is_file() else []
                print(f"seed {seed}: train.run{' --resume' if resume else ''} (log: {log})", file=sys.stderr)
                cmd = [sys.executable, "-m", "train.run", "--domain", args.domain, "--seed", str(seed),
                       "--workdir", str(run_dir), *train_flags, *resume]
                if _run(cmd, log):
                    print(f"error: seed {seed}: train.run failed; see {log}", file=sys.stderr)
                    return 1
            print(f"seed {seed}: evaluate", file=sys.stderr)
            cmd = [sys.executable, "-m", "smis_jax.evaluate", "--workdir", str(run_dir), "--out",
                   str(run_dir / "evaluate.json")] + (["--samples", str(args.samples)] if args.samples else [])
            if _run(cmd, log) or not truth.is_file():
                print(f"error: seed {seed}: evaluate failed; see {log}", file=sys.stderr)
                return 1
            print(f"seed {seed}: done in {time.time() - start:.0f} s", file=sys.stderr)
        results[seed] = json.loads(truth.read_text())
    if args.at_step is not None:
        at_step: dict[int, dict[str, Any]] = {}
        for seed in args.seeds:
            run_dir, log = workdir / f"seed-{seed}", workdir / f"seed-{seed}.log"
            truth = run_dir / f"step-{args.at_step}" / "groundtruth.json"
            if not truth.is_file():
                print(f"seed {seed}: evaluate step {args.at_step}", file=sys.stderr)
                cmd = [sys.executable, "-m", "smis_jax.evaluate", "--workdir", str(run_dir), "--step",
                       str(args.at_step)] + (["--samples", str(args.samples)] if args.samples else [])
                if _run(cmd, log) or not truth.is_file():
                    print(f"error: seed {seed}: evaluate --step {args.at_step} failed; see {log}", file=sys.stderr)
                    return 1
            at_step[seed] = json.loads(truth.read_text())
        _write_spread(workdir / f"step-{args.at_step}", args, train_flags, at_step)
    _write_spread(workdir, args, train_flags, results)
    return 0


def _write_spread(out: Path, args, train_flags: list[str], results: dict[int, dict[str, Any]]) -> None:
    """sweep.json, sweep.md, sweep.png and sweep-curves.png (the seeds' runs' curves) of ``results`` into ``out``."""
    workdir = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = spread(results)
    first = results[args.seeds[0]]
    summary = {"domain": args.domain, "seeds": args.seeds, "train_flags": train_flags,
               "runs": {str(s): str(workdir / f"seed-{s}") for s in args.seeds},
               "steps": {str(s): r.get("step") for s, r in results.items()},
               "n_samples": first.get("n_samples"), "n_test_masks": first.get("n_test_masks"),
               "rows": {name: {**r, "values": {str(s): v for s, v in r["values"].items()}} for name, r in rows.items()}}
    found = curves({s: workdir / f"seed-{s}" for s in args.seeds})
    summary["curves"] = {key: {"name": c["name"], "steps": {str(step): {**v, "values": {str(s): x for s, x in
                                                                                        v["values"].items()}}
                                                            for step, v in c["steps"].items()}}
                         for key, c in found.items()}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    figure = _curves_figure(found, args.seeds)
    if figure is not None:
        viz.save_png(out / "sweep-curves.png", figure)
    title = (f"ground truth, {args.domain}, {len(args.seeds)} seeds (step {first.get('step')}; "
             f"{first.get('n_samples')} samples, {first.get('n_test_masks')} held-out masks)")
    table = format_markdown(rows, args.seeds, title)
    (out / "sweep.md").write_text(table)
    viz.save_png(out / "sweep.png", plots.groundtruth_bars([results[s] for s in args.seeds]))
    print(table)


if __name__ == "__main__":
    sys.exit(main())
