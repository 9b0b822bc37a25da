"""``bench app``: the latency of the editor's update (mask -> image + variants -> PNGs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from smis_jax.app import _default_checkpoint
from smis_jax.app.editor import Editor
from smis_jax.bench.harness import device_info, host_context, median

__all__ = ["bench_app"]

def bench_app(checkpoint: str | None, variants: int = 4, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """The editor's update (issue 14): a new mask -> encoder -> generator (image + N variants) -> PNGs, as
    ``python -m smis_jax.app`` serves it, timed by :meth:`smis_jax.app.editor.Editor.update` after its warm-up."""
    editor = Editor(checkpoint or _default_checkpoint(), variants=variants)
    rng = np.random.default_rng(seed)
    labels = np.zeros((editor.size, editor.size), np.uint8)
    times = []
    for i in range(repeats):  # each update paints one more rectangle, as a person adds strokes between updates
        x, y = rng.integers(0, editor.size - 32, 2)
        labels[y:y + 32, x:x + 32] = rng.integers(0, editor.domain.n_classes)
        times.append(editor.update(labels, seed=i, truncation=0.7).ms)
    return {"bench": "app", "checkpoint": str(editor.checkpoint), "domain": editor.domain.name,
            "n_classes": editor.domain.n_classes, "mask_size": editor.size, "variants": variants,
            "generator_size": editor.pipeline.generator.config.size, "repeats": repeats,
            "update_ms_median": round(median(times), 1), "update_ms_min": round(min(times), 1),
            "update_ms_max": round(max(times), 1), "compile_s": round(editor.compile_s, 1), **device_info(),
            **host_context()}
