"""Benchmarks: pseudo-labelling, training steps and inversion, with the original's path beside ours (issue #4).

    python -m smis_jax.bench labeling --config ffhq --mode dense --batch 1,4 --dtype float32
    python -m smis_jax.bench labeling --config ffhq --mode sparse --batch 1,4 --vectors-per-class 9
    python -m smis_jax.bench train-step --config ffhq --mode dense            # batch 2, IR-SE-50
    python -m smis_jax.bench inversion --config church --batch 5 --steps 4    # K = 5 images
    python -m smis_jax.bench labeling --quick                                  # tiny shapes: a smoke test
    python -m smis_jax.bench app --checkpoint EXPORT                           # the editor's update latency

Every comparison runs all its paths in one process on identical inputs: each path is compiled and warmed up
once, then the paths take turns repeat by repeat (a shared, noisy machine slows both alike) and the median
is reported; compile time is reported apart. Weights are random at the real shapes (speed does not depend on
the values). Each result is one JSON line and a row of a table: without ``--json-out`` the JSON lines go to
stdout and the table to stderr (``> results.jsonl`` keeps only JSON); with it the lines are appended to that file
and the table goes to stdout.

Two versions of the original are measured. ``original-torch`` (labelling only) is the original itself: its
PyTorch generator (rosinality's, as vendored by ``draggan``) and psp.py's labelling code, see
:mod:`smis_jax.bench.reference`; it needs torch and draggan (when they are missing, one ``note:`` line on stderr
says so and how to install them), runs in float32 on the CPU, and is what a user switching
from the original gains. ``original-jax`` keeps the original's algorithmic structure but runs on our
(tested-equal) ops, so a ratio against it measures the structural change alone, and ``original-torch`` against
``original-jax`` measures the ops alone:

* labelling -- the original renders every sample at full resolution (coach.py:137-140; the image is returned,
  as the original returns it, so XLA cannot drop the layers above 64x64) and then labels it. Dense labels were
  already vectorised in the original, so only the render differs. Sparse labels follow psp.py:256-277: per
  sample, per class c >= 1, one jitted device call (similarity matmul, top-k, descending sort of the 3*N_c
  pairs), a device->host copy and ``np.unique`` on the host (the original's ``.cpu()`` round trip), then the
  running-best update (done in numpy: on a CPU "device" that is host memory anyway, which favours the original).
  Ours renders only up to the 64x64 block and labels in one vectorised jitted function.
* train-step -- the original: full-resolution render for labelling + the original labelling structure + the
  encoder update (same loss and Ranger as ours) + the full decoder forward on the encoder's output, which
  coach.py:146 computes every step for logging although the loss does not use it (returned, so it is computed).
  Ours: :func:`smis_jax.training.make_train_step` as training runs it. Both thread the same encoder state.
* inversion -- the original inverts the K images one after another (K sequential runs of
  :func:`smis_jax.inversion.invert` on one image); ours inverts all K at once. Steps per second are steps of
  all K images.

Prototypes: five "shots" are generated (rendered to 64x64 with the same random generator) and labelled with
random masks, and :func:`smis_jax.labeling.prototypes` builds the prototypes from them, so cosines behave as in
training (random unit vectors would give cosines near 0, degenerate argmaxes and no sparse pixel above the
0.5 threshold). Dense: a random Voronoi partition of each shot into L classes. Sparse: ``vectors_per_class``
random annotated 64x64 pixels per class c >= 1 over the five shots (default 9: the five real CelebALandmark-HQ
masks of the samples give 616 vectors for 70 classes, 8.8 per class).

With the PyTorch path and no ``--weights``, the random weights are the PyTorch generator's own initialisation
converted to ours by the shipped converter, and the same z and noise go to every path, so the rows also report
how many label pixels agree with each original (``agree_with_original_torch``, ``agree_with_original_jax``).

Layout: :mod:`~smis_jax.bench.presets` (shapes and class counts), :mod:`~smis_jax.bench.harness` (devices, peak
FLOP/s, memory, FLOP counts, the timing protocol), :mod:`~smis_jax.bench.inputs` (weights, samples, prototypes),
:mod:`~smis_jax.bench.reference` (the original's labelling, on our ops and in PyTorch), one ``case_*`` module per
benchmark, :mod:`~smis_jax.bench.table` and :mod:`~smis_jax.bench.cli` (``python -m smis_jax.bench``).
"""

from smis_jax.bench.case_app import bench_app
from smis_jax.bench.case_inversion import bench_inversion
from smis_jax.bench.case_labeling import bench_labeling
from smis_jax.bench.case_train_step import bench_train_step
from smis_jax.bench.cli import main
from smis_jax.bench.harness import PEAK_FLOPS, device_info, jaxpr_flops, peak_flops
from smis_jax.bench.inputs import make_prototypes
from smis_jax.bench.presets import PRESETS, BenchError, Preset
from smis_jax.bench.reference import original_sparse_labels
from smis_jax.bench.table import format_table

__all__ = [
    "BenchError", "Preset", "PRESETS", "PEAK_FLOPS", "device_info", "peak_flops", "jaxpr_flops", "make_prototypes",
    "original_sparse_labels", "bench_labeling", "bench_train_step", "bench_inversion",
    "bench_app", "format_table", "main",
]
