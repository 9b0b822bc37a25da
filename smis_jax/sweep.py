"""The built-in main job over several seeds, and the spread of every ground-truth figure.

    python -m smis_jax.sweep --domain shapes --seeds 0,1,2 --workdir runs/sweep [--samples 256] [train.run flags]

For each seed S: ``python -m train.run --domain D --seed S --workdir WORKDIR/seed-S [flags]``, then
``python -m smis_jax.evaluate --workdir WORKDIR/seed-S`` (the ground-truth evaluation, ``groundtruth.json``). The
seed is the run's: it draws the shots' inversion (starting codes and noise), the prototypes' noise, the encoder's
initial weights and training samples, and the evaluation's generated samples; the shots, the held-out masks and the
generator are the same in every run. Other flags go to train.run unchanged (e.g. ``--max-steps 500``).

Resumable per seed: a seed whose ``groundtruth.json`` exists is skipped; one with an export but no evaluation is
only evaluated; one with a ``config.json`` but no export is continued with ``--resume``; otherwise it starts
afresh. Each seed's output goes to ``WORKDIR/seed-S.log``.

Writes ``WORKDIR/sweep.json`` (per row of groundtruth.json, per-class IoU included: the values per seed, mean,
standard deviation (n - 1), min and max) and ``WORKDIR/sweep.md`` (the same as a markdown table, mean +- sd and
range, seeds named) and ``WORKDIR/sweep.png`` (per-class bars: mean, min..max, a dot per seed).
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

__all__ = ["flatten", "spread", "format_markdown", "main"]

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
    parser = argparse.ArgumentParser(prog="python -m smis_jax.sweep", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # --seed is not --seeds
    builtin_domains = [name for name, d in DOMAINS.items() if d.builtin]
    parser.add_argument("--domain", required=True, choices=builtin_domains)
    parser.add_argument("--seeds", type=_seeds, required=True, help="comma-separated run seeds, e.g. 0,1,2")
    parser.add_argument("--workdir", required=True, help="the sweep's folder: one run folder per seed inside")
    parser.add_argument("--samples", type=int, help="ground-truth evaluation's generated samples (default 256)")
    args, train_flags = parser.parse_known_args(argv)
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
    rows = spread(results)
    first = results[args.seeds[0]]
    summary = {"domain": args.domain, "seeds": args.seeds, "train_flags": train_flags,
               "runs": {str(s): str(workdir / f"seed-{s}") for s in args.seeds},
               "steps": {str(s): r.get("step") for s, r in results.items()},
               "n_samples": first.get("n_samples"), "n_test_masks": first.get("n_test_masks"),
               "rows": {name: {**r, "values": {str(s): v for s, v in r["values"].items()}} for name, r in rows.items()}}
    (workdir / "sweep.json").write_text(json.dumps(summary, indent=1))
    title = (f"ground truth, {args.domain}, {len(args.seeds)} seeds (step {first.get('step')}; "
             f"{first.get('n_samples')} samples, {first.get('n_test_masks')} held-out masks)")
    table = format_markdown(rows, args.seeds, title)
    (workdir / "sweep.md").write_text(table)
    viz.save_png(workdir / "sweep.png", plots.groundtruth_bars([results[s] for s in args.seeds]))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
