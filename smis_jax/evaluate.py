"""Evaluate a trained encoder: label self-consistency (``smis_jax.metrics``) and, on a built-in domain, the
paper's evaluation on ground truth (``smis_jax.builtin.groundtruth``).

    python -m smis_jax.evaluate --checkpoint runs/faces/export [--masks DIR] [--report DIR]
    python -m smis_jax.evaluate --workdir runs/faces [--masks DIR] [--step N]

``--checkpoint`` reads an export alone (a copied ``export/`` is enough: it holds the encoder, the generator, the
prototypes and the run record). ``--workdir`` evaluates a run folder: its export, or with ``--step`` (or before
the run has finished) one of its checkpoints; built-in runs also get ``groundtruth.json``, ``groundtruth.png``,
``groundtruth-iou.png`` and ``curves.png`` in the run folder and the numbers appended to its ``metrics.jsonl``. A
built-in run's checkpoint (``--step N``) gets the whole ground-truth evaluation too: the step is exported to
``WORKDIR/step-N/export`` (which synthesize and the editor then read as any export) and its report goes to
``WORKDIR/step-N/``.

Masks: ``--masks`` (label PNGs or folders), or the built-in domain's held-out masks, or the training data's
``test/labels`` when the data folder recorded by the run still exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp

from smis_jax import builtin, export, precision
from smis_jax.builtin import groundtruth
from smis_jax.config import DOMAINS, get_domain
from smis_jax.errors import MissingFileError, UserError
from smis_jax.experiment import export_checkpoint, load_test_masks, restore_checkpoint
from smis_jax.metrics import self_consistency
from smis_jax.precision import PRECISIONS

__all__ = ["evaluate_export", "evaluate_checkpoint", "main"]


def _masks(masks: Sequence[str | Path] | None, domain_name: str, data: str | None, where: Path):
    """(names, (N, 256, 256) labels) of ``masks``, else the built-in or the recorded data's held-out masks."""
    domain = get_domain(domain_name)
    if masks is None:
        if data == "built-in" or (data is None and domain.builtin):
            names, labels, _ = builtin.test_masks(domain)
            return list(names), labels
        test_dir = Path(data) / "test" / "labels" if data else None
        if test_dir is None or not test_dir.is_dir():
            raise MissingFileError(f"{where}: no held-out masks at hand (the training data's test/labels, "
                                    f"{test_dir}, is not there); pass --masks")
        masks = [test_dir]
    names, labels = load_test_masks(masks, domain.n_classes)
    if not names:
        raise MissingFileError(f"no masks to evaluate in {', '.join(map(str, masks))}")
    return names, labels


def evaluate_export(path: str | Path | export.RunExport, masks: Sequence[str | Path] | None = None,
                    batch_size: int = 4) -> dict[str, Any]:
    """Self-consistency of an export (a folder, or one already loaded) on ``masks`` (default: the domain's held-out
    masks)."""
    run_export = path if isinstance(path, export.RunExport) else export.load(path)
    run, pipeline = run_export.run, run_export.pipeline
    names, labels = _masks(masks, run["domain"], run.get("data"), run_export.path)
    enc = pipeline.encoder
    g = pipeline.generator
    result = self_consistency(enc.config, {"params": enc.params, "batch_stats": enc.batch_stats}, g.config,
                              g.params, g.noises, jnp.asarray(pipeline.latent_avg), run_export.prototypes, labels,
                              batch_size=batch_size)
    return {**result, "step": int(run["step"]), "masks": names}


def evaluate_checkpoint(workdir: str | Path, step: int | None = None, masks: Sequence[str | Path] | None = None,
                        batch_size: int = 4) -> dict[str, Any]:
    """Self-consistency of a run's checkpoint ``step`` (default: the latest). The generator is the run's export's
    when there is one, else the file the run was started with."""
    workdir = Path(workdir)
    ckpt = restore_checkpoint(workdir, step)
    g = ckpt.generator
    names, labels = _masks(masks, ckpt.cfg.domain, ckpt.record.get("data"), workdir)
    result = self_consistency(ckpt.enc_config, {"params": ckpt.state.params, "batch_stats": ckpt.state.batch_stats},
                              g.config, g.params, g.noises, jnp.asarray(ckpt.latent_avg), ckpt.protos, labels,
                              batch_size=batch_size)
    return {**result, "step": ckpt.step, "masks": names}


def _steps(text: str) -> list[int]:
    try:
        steps = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts like 0,10,50, got {text!r}") from None
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"expected step counts >= 0, got {text!r}")
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smis_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an export (a run's export/ folder, also when copied elsewhere)")
    source.add_argument("--workdir", help="a training run's folder (python -m train.run --workdir)")
    parser.add_argument("--masks", nargs="*", help="label PNGs or folders (default: the domain's held-out masks)")
    parser.add_argument("--step", type=int, help="--workdir: evaluate this checkpoint instead of the export")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", help="write the result as JSON here too")
    parser.add_argument("--report", help="built-in domains: folder for groundtruth.json/.png, groundtruth-iou.png and "
                                         "curves.png "
                                         "(default: the run folder with --workdir, WORKDIR/step-N with --step, none with "
                                         "--checkpoint)")
    parser.add_argument("--samples", type=int, default=256,
                        help="built-in domains: generated samples for the pseudo-label and bfloat16 measures")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="float32 matmul/conv precision (default: the run's --precision, highest if it has none)")
    parser.add_argument("--refine-steps", type=_steps, default=None, metavar="N,N,...",
                        help="built-in domains: also measure every refinement (original, wplus, fs) at these step counts, e.g. "
                             "0,10,50,200 (minutes; default off)")
    args = parser.parse_args(argv)
    if args.step is not None and args.workdir is None:
        parser.error("--step needs --workdir (an export holds one step)")
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        run_dir = Path(args.workdir) if args.workdir else None
        export_dir = Path(args.checkpoint) if args.checkpoint else run_dir / "export"
        use_export = args.checkpoint is not None or (args.step is None and (export_dir / "config.json").is_file())
        if use_export:
            run_export = export.load(export_dir)  # once: both evaluations read it
            with precision.policy(args.precision or run_export.run.get("train", {}).get("precision")):
                result = evaluate_export(run_export, masks=args.masks, batch_size=args.batch_size)
                if get_domain(run_export.run["domain"]).builtin and not args.masks:
                    report = args.report or run_dir
                    truth = groundtruth.evaluate(run_export, report_dir=report, run_dir=run_dir,
                                                 n_samples=args.samples, log=log,
                                                 refine_steps=args.refine_steps)
                    result["groundtruth"] = truth
                    print(groundtruth.format_table(truth), file=sys.stderr)
        else:
            record = run_dir / "config.json"
            saved = json.loads(record.read_text()).get("train", {}) if record.is_file() else {}
            with precision.policy(args.precision or saved.get("precision")):
                result = evaluate_checkpoint(run_dir, step=args.step, masks=args.masks, batch_size=args.batch_size)
                if saved.get("domain") in DOMAINS and DOMAINS[saved["domain"]].builtin and not args.masks:
                    # the whole ground-truth evaluation of that step: its checkpoint exported (W/step-N/export)
                    step_export = export_checkpoint(run_dir, result["step"], log=log)
                    truth = groundtruth.evaluate(export.load(step_export),
                                                 report_dir=args.report or step_export.parent, n_samples=args.samples,
                                                 log=log, refine_steps=args.refine_steps)
                    result["groundtruth"] = truth
                    print(groundtruth.format_table(truth), file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
