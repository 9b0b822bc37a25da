"""How often pseudo-labels agree between float32 matmul/conv precisions on this machine (``smis_jax.precision``).

    python bench/precision_agreement.py [--export runs/shapes/export] [--samples 256] [--json-out OUT.jsonl]

The built-in domain's shipped generator draws ``--samples`` images under each precision (``highest``,
``tensorfloat32``, ``default``) from the same latents and noise; their 64x64 features are labelled (dense: cosine
argmax; sparse: top-3 above 0.5) with prototypes built once under ``highest`` from 8 other samples and the oracle's
masks of them (sparse: scribbles of those masks), or with an export's own prototypes (``--export``). Reported per
precision against ``highest``: label agreement (sparse also where either labels), the oracle's agreement on the
images, and the features' largest relative difference. On XLA:CPU all are exact (the setting does not change CPU
results); on a GPU ``default`` is TF32 on recent NVIDIA cards.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin, data, export, labeling, precision
from smis_jax.builtin import groundtruth, shapes
from smis_jax.io import load_generator


def _prototypes(g, key):
    """Dense and sparse prototypes from 8 generated samples and the oracle's masks of them (under ``highest``)."""
    images, features = groundtruth._samples(g.config, g.params, key, 8, jnp.float32)
    masks = shapes.segment(np.asarray(images))
    scribbles = np.stack([shapes.scribbles(m, i) for i, m in enumerate(masks)])
    n = len(shapes.CLASS_NAMES)
    return {"dense": (labeling.prototypes(features, data.onehot(masks, n), mode="dense"), {}),
            "sparse": (labeling.prototypes(features, data.onehot(scribbles, n + 1), mode="sparse"),
                       {"topk": 3, "cos_th": 0.5})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", help="a built-in-domain export: its generator and prototypes")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--json-out", help="append one JSON line per precision here")
    args = ap.parse_args(argv)
    with precision.policy("highest"):
        if args.export:
            run_export = export.load(args.export)
            g = run_export.pipeline.generator
            train = run_export.run["train"]
            mode = "sparse" if isinstance(run_export.prototypes, labeling.SparsePrototypes) else "dense"
            kw = {"topk": int(train["topk"]), "cos_th": float(train["cos_th"])} if mode == "sparse" else {}
            protos = {mode: (run_export.prototypes, kw)}
        else:
            g = load_generator(builtin.generator_path())
            protos = _prototypes(g, jax.random.key(1))
    key = jax.random.key(2)
    outputs = {}
    for value in precision.PRECISIONS:
        with precision.policy(value):
            images, features = groundtruth._samples(g.config, g.params, key, args.samples, jnp.float32)
            labels = {m: np.asarray(labeling.pseudo_label(features, p, out_size=64, **kw))
                      for m, (p, kw) in protos.items()}
        outputs[value] = (np.asarray(images), np.asarray(features), labels)
    device = jax.devices()[0]
    ref_images, ref_features, ref_labels = outputs["highest"]
    rows = []
    for value, (images, features, labels) in outputs.items():
        row = {"bench": "precision-agreement", "precision": value, "against": "highest", "samples": args.samples,
               "generator": args.export or "built-in shapes-gan", "platform": device.platform,
               "device_kind": device.device_kind, "jax": jax.__version__, **precision.machine(),
               "feature_max_rel_diff": float(np.abs(features - ref_features).max() / np.abs(ref_features).max()),
               "oracle_agreement": float((shapes.segment(images) == shapes.segment(ref_images)).mean())}
        for m, lab in labels.items():
            row[f"{m}_label_agreement"] = float((lab == ref_labels[m]).mean())
            if m == "sparse":
                either = (lab > 0) | (ref_labels[m] > 0)
                row["sparse_label_agreement_labelled"] = float((lab[either] == ref_labels[m][either]).mean())
        rows.append(row)
        print(f"{value:>14} vs highest on {device.device_kind}: "
              + ", ".join(f"{k} {v:.5f}" for k, v in row.items() if k.endswith(("agreement", "labelled", "diff"))))
    if args.json_out:
        with open(args.json_out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
