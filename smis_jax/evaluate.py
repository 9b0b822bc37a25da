"""Label self-consistency (README.md, "Synthesis and evaluation"): does the synthesised image carry the layout it
was asked for?

For each held-out mask: encoder (eval mode) + latent_avg -> generator (the checkpoint's fixed noise) -> the
output's own 64x64 features -> pseudo-labels with the run's prototypes -> IoU against the input mask, per class and
mean. Dense domains score every class that occurs in the masks or the predictions; sparse domains ignore class 0
("not annotated").

    python -m smis_jax.evaluate --workdir runs/faces [--masks DIR] [--step N]

On a built-in domain (``--domain shapes``) it also runs the paper's evaluation on ground truth
(``smis_jax.groundtruth``): pseudo-label quality, synthesis quality, inversion quality and bfloat16 agreement,
written to the run's ``groundtruth.json``, ``metrics.jsonl``, ``groundtruth.png`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import labeling
from smis_jax.errors import UserError
from smis_jax.psp import EncoderConfig, GradualStyleEncoder
from smis_jax.stylegan2 import Generator, GeneratorConfig

__all__ = ["confusion", "iou_from_confusion", "self_consistency", "main"]


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(L, L) counts: rows = target class, columns = predicted class."""
    idx = target.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(conf: np.ndarray, ignore_background: bool) -> dict[str, Any]:
    """Per-class IoU over the classes with a non-empty union, and their mean."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    classes = [c for c in range(conf.shape[0]) if union[c] > 0 and not (ignore_background and c == 0)]
    per_class = {int(c): float(tp[c] / union[c]) for c in classes}
    miou = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"miou": miou, "per_class": per_class}


@partial(jax.jit, static_argnames=("enc_config", "gen_config"))
def _labels_of_synthesis(enc_config: EncoderConfig, gen_config: GeneratorConfig, enc_vars, gen_params, noises,
                         latent_avg, protos, onehot):
    codes = GradualStyleEncoder(enc_config).apply(enc_vars, onehot, False)
    _, features = Generator(gen_config).apply(gen_params, codes + latent_avg, noises, until_res=64)
    return labeling.pseudo_label(features, protos, out_size=256)


def self_consistency(enc_config: EncoderConfig, enc_vars, gen_config: GeneratorConfig, gen_params, noises,
                     latent_avg, protos, masks: np.ndarray, batch_size: int = 4) -> dict[str, Any]:
    """masks (N, 256, 256) class ids -> {'miou', 'per_class', 'n_masks'}.

    ``noises``: the generator's fixed noise buffers (the result is deterministic). ``protos``: Dense or Sparse
    prototypes; sparse masks are scored without class 0. Batches have a fixed size (the last one padded).
    """
    masks = np.asarray(masks)
    n_classes = enc_config.input_nc
    sparse = isinstance(protos, labeling.SparsePrototypes)
    conf = np.zeros((n_classes, n_classes), np.int64)
    for start in range(0, len(masks), batch_size):
        chunk = masks[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
        onehot = labeling.labels_to_onehot(jnp.asarray(padded), n_classes)
        pred = np.asarray(_labels_of_synthesis(enc_config, gen_config, enc_vars, gen_params, list(noises),
                                               latent_avg, protos, onehot))[: len(chunk)]
        conf += confusion(pred, chunk, n_classes)
    out = iou_from_confusion(conf, ignore_background=sparse)
    out["n_masks"] = int(len(masks))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smis_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a training run's folder (python -m train.run --workdir)")
    parser.add_argument("--masks", nargs="*", help="label PNGs or folders (default: the run's test/labels)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", help="write the result as JSON here too")
    parser.add_argument("--samples", type=int, default=256,
                        help="built-in domains: generated samples for the pseudo-label and bfloat16 measures")
    args = parser.parse_args(argv)

    from smis_jax import experiment

    try:
        result = experiment.evaluate_run(args.workdir, masks=args.masks, step=args.step, batch_size=args.batch_size)
        record = json.loads((Path(args.workdir) / "config.json").read_text())
        if record.get("data") == "built-in" and not args.masks and args.step is None:
            from smis_jax import groundtruth

            truth = groundtruth.evaluate(args.workdir, n_samples=args.samples, log=lambda m: print(m, file=sys.stderr))
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
