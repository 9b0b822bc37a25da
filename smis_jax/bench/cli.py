"""``python -m smis_jax.bench``: options, defaults and output of the benchmarks (see :mod:`smis_jax.bench`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import jax

from smis_jax.bench.case_app import bench_app
from smis_jax.bench.case_inversion import bench_inversion
from smis_jax.bench.case_labeling import bench_labeling
from smis_jax.bench.case_train_step import bench_builtin_step, bench_train_step
from smis_jax.bench.presets import LABEL_SIZE, PRESETS, BenchError
from smis_jax.bench.table import format_table
from smis_jax.config import LABELERS
from smis_jax.errors import UserError

__all__ = ["main"]

DESCRIPTION = ("Benchmarks: pseudo-labelling, training steps and inversion, with the original's path beside ours "
               "(issue #4). What each path does: the docstring of smis_jax.bench (smis_jax/bench/__init__.py).")

_DEFAULT_BATCH = {"labeling": "1,4,16", "train-step": "2", "inversion": "5"}
_QUICK_BATCH = {"labeling": "1", "train-step": "2", "inversion": "2"}


def _parse_batches(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--batch must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"--batch must be comma-separated positive integers, got {text!r}")
    return values


def _torch_row(args) -> bool | str:
    """bench_labeling's ``torch_row``: False (--no-torch: left out, nothing said), a reason, or True (try it)."""
    if args.no_torch:
        return False
    if args.quick:
        return "--quick runs the golden (tiny) shapes without it (drop --quick and use --config ffhq, church, car or ukiyoe)"
    return True


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m smis_jax.bench", description=DESCRIPTION)
    ap.add_argument("bench", choices=["labeling", "train-step", "inversion", "app"])
    ap.add_argument("--config", choices=sorted(PRESETS) + ["shapes", "shapes-scribbles"],
                    help="generator shapes and class counts (default ffhq; golden with --quick); train-step also "
                         "takes a built-in domain: its step now beside the previous release's, on the shipped "
                         "generator")
    ap.add_argument("--label-lambda", type=float, help="train-step on a built-in domain: the new path's "
                    "label-space loss weight (default: the domain's)")
    ap.add_argument("--offset-res", type=int, help="train-step on a built-in domain: the new path's encoder offset "
                    "head (0 = none; default: the domain's)")
    ap.add_argument("--mode", choices=["dense", "sparse"], default="dense")
    ap.add_argument("--batch", help="comma-separated batch sizes (inversion: K images). Defaults: labeling 1,4,16; "
                    "train-step 2; inversion 5")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="labeling only: generator params and inputs in this dtype")
    ap.add_argument("--repeats", type=int, help="timed runs per path after the warm-up (default 3; 2 with --quick)")
    ap.add_argument("--steps", type=int, help="inversion steps per timed run (default 5; 2 with --quick)")
    ap.add_argument("--labeler", default="paper",
                    help="labeling: also time these pseudo-labellers (comma-separated: " + ", ".join(LABELERS)
                    + "; smis_jax.labelers) beside the paper's ('ours'), rows ours-<labeler>")
    ap.add_argument("--vectors-per-class", type=int, default=9, help="sparse: annotated 64x64 vectors per class")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="skip a batch whose XLA buffers exceed this (default: 12 on CPU, no limit elsewhere)")
    ap.add_argument("--no-torch", action="store_true", help="labeling: leave out the original-torch path (the "
                    "original's PyTorch generator and labelling; needs torch and draggan)")
    ap.add_argument("--weights", help="labeling: a StyleGAN2 checkpoint (rosinality .pt, NVIDIA .pkl or converted "
                    "directory) to use instead of random weights (its shapes replace the config's; the original-torch "
                    "path only takes a .pt)")
    ap.add_argument("--quick", action="store_true", help="golden (tiny) config, first default batch, 2 repeats")
    ap.add_argument("--json-out", type=Path, help="append the JSON lines to this file and print the table to stdout "
                    "(without it: JSON lines to stdout, the table to stderr)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="app: the synthesis export the editor serves (default: the editor's)")
    ap.add_argument("--variants", type=int, default=4, help="app: variants per update (default 4, as the editor)")
    return ap



def _labelers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in LABELERS]
    if bad or not names:
        raise BenchError(f"--labeler {text!r}: expected comma-separated names among {', '.join(LABELERS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.bench == "app":  # one line of its own: the comparison table below is for original-vs-ours paths
        try:
            row = bench_app(args.checkpoint, args.variants, args.repeats or 20, args.seed)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.json_out is not None:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json_out, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        else:
            print(json.dumps(row, sort_keys=True))
        print(f"app: {row['update_ms_median']:.0f} ms per update (median of {row['repeats']}; image + "
              f"{row['variants']} variants at {row['mask_size']}px, {row['generator_size']}px generator, domain "
              f"{row['domain']}; {row['device']} x{row['cpu_count']} cores; compile {row['compile_s']} s)",
              file=sys.stderr if args.json_out is None else sys.stdout)
        return 0
    try:
        if args.config in ("shapes", "shapes-scribbles"):
            if args.bench != "train-step":
                raise BenchError(f"--config {args.config} applies to train-step only")
            overrides = {k: v for k, v in (("label_lambda", args.label_lambda), ("offset_res", args.offset_res))
                         if v is not None}
            rows = bench_builtin_step(args.config, _parse_batches(args.batch) if args.batch else None,
                                      args.repeats or 3, args.seed, **overrides)
            return _print_rows(rows, args)
        preset = PRESETS[args.config or ("golden" if args.quick else "ffhq")]
        batches = _parse_batches(args.batch or (_QUICK_BATCH if args.quick else _DEFAULT_BATCH)[args.bench])
        repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
        steps = args.steps if args.steps is not None else (2 if args.quick else 5)
        if repeats < 1 or steps < 1 or args.vectors_per_class < 1:
            raise BenchError("--repeats, --steps and --vectors-per-class must be >= 1")
        if args.bench != "labeling" and args.dtype != "float32":
            raise BenchError(f"{args.bench} runs in float32 only; --dtype bfloat16 applies to labeling")
        if args.bench != "labeling" and args.weights:
            raise BenchError("--weights applies to labeling only")
        max_gb = args.max_memory_gb
        if max_gb is None and jax.devices()[0].platform == "cpu":
            max_gb = 12.0
        if args.bench == "labeling":
            rows = bench_labeling(preset, args.mode, batches, args.dtype, repeats, args.vectors_per_class,
                                  max_memory_gb=max_gb, torch_row=_torch_row(args), seed=args.seed,
                                  weights=args.weights, labeler=_labelers(args.labeler))
        elif args.bench == "train-step":
            rows = bench_train_step(preset, args.mode, batches, repeats, args.vectors_per_class, max_gb, args.seed)
        else:
            # --quick: 64x64 targets (LPIPS at 256 dominates a tiny-generator step) and no extra FLOPs compile.
            rows = bench_inversion(preset, batches, steps, repeats, args.seed, xla_flops=not args.quick,
                                   target_size=64 if args.quick else LABEL_SIZE)
    except UserError as e:  # bad options, unreadable --weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _print_rows(rows, args)


def _print_rows(rows, args) -> int:
    lines = [json.dumps(row, sort_keys=True) for row in rows]
    table = format_table(rows)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
        print(table)
    else:
        print("\n".join(lines))
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
