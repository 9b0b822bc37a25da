"""``bench labeling``: pseudo-labels per second, the original's paths (PyTorch and on our ops) beside ours."""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import labelers, labeling
from smis_jax.bench import reference
from smis_jax.bench.harness import (
    Memory,
    TimedPath,
    aot_compile,
    check_fits,
    device_info,
    flops_of,
    host_context,
    measure,
    median,
    result_row,
    xla_bytes,
)
from smis_jax.bench.inputs import (
    cast_floats,
    generator_dtype_report,
    make_labeler,
    make_prototypes,
    sample,
    z_and_noise,
)
from smis_jax.bench.presets import LABEL_SIZE, Preset
from smis_jax.bench.reference import class_pair_flops, original_sparse_labels, vectors_by_class
from smis_jax.io import load_generator, nvidiafile, torchfile
from smis_jax.nets.stylegan2 import FEATURE_RES, Generator, GeneratorConfig, init_params

__all__ = ["bench_labeling"]

def _ours_labels(gcfg, batch, dtype, topk, out_size, params, protos, cos_th, key):
    _, features, _ = sample(gcfg, params, key, batch, FEATURE_RES, dtype)
    return labeling.pseudo_label(features, protos, topk=topk, cos_th=cos_th, out_size=out_size)


def _labeler_labels(gcfg, batch, dtype, topk, out_size, params, labeler, cos_th, key):
    """The training step's labelling with a fitted labeller: z -> W+ -> generator to 64x64 -> labels."""
    z, noise = z_and_noise(gcfg, key, batch, FEATURE_RES, dtype)
    g = Generator(gcfg)
    w = g.apply(params, z, method=Generator.mapping)
    w_plus = jnp.broadcast_to(w[:, None, :], (batch, gcfg.n_latent, gcfg.style_dim))
    return labelers.label_latents(gcfg, params, w_plus, noise, labeler, topk=topk, cos_th=cos_th, out_size=out_size)


def _original_dense_labels(gcfg, batch, dtype, out_size, params, protos, key):
    image, features, _ = sample(gcfg, params, key, batch, None, dtype)
    return image, labeling.pseudo_label(features, protos, out_size=out_size)


def _original_render(gcfg, batch, dtype, params, key):
    image, features, _ = sample(gcfg, params, key, batch, None, dtype)
    return image, features



def _torch_reference(gcfg: GeneratorConfig, weights: str | None, seed: int) -> reference.TorchReference:
    """The PyTorch original's generator (see :mod:`smis_jax.bench.reference`), or :class:`reference.Unavailable`
    saying why not: torch or draggan missing, or ``weights`` it cannot take (only a rosinality ``.pt``, its
    ``g_ema``; not a converted directory or an NVIDIA ``.pkl``), or a generator outside rosinality's layout."""
    reference.import_generator()  # what is installed first: the other reasons only matter once it is
    state_dict = None
    if weights is not None:
        if Path(weights).is_dir():
            raise reference.Unavailable(f"--weights {weights} is a converted directory; the PyTorch generator takes "
                                        "a rosinality .pt")
        if nvidiafile.is_pickle(weights):  # by content, not by name
            raise reference.Unavailable(f"--weights {weights} is an NVIDIA pickle; the PyTorch generator takes a "
                                        "rosinality .pt")
        state_dict = torchfile.load(weights)["g_ema"]
    return reference.load_reference(gcfg, channel_multiplier(gcfg), seed, state_dict)


def _torch_original_path(ref, gcfg: GeneratorConfig, batch: int, mode: str, protos, keys, topk: int,
                         cos_th: float) -> TimedPath:
    """psp.py's labelling on rosinality's PyTorch generator, fed the z and noise our paths draw from ``keys``."""
    inputs = []
    for key in keys:
        z, noise = z_and_noise(gcfg, key, batch, None, jnp.float32)
        inputs.append(reference.inputs(np.asarray(z), [np.asarray(n) for n in noise]))
    if mode == "dense":
        tprotos = reference.dense_prototypes(protos.vectors)
    else:
        tprotos = reference.sparse_vectors(vectors_by_class(protos))
    return TimedPath("original-torch", lambda r: reference.labels(ref, *inputs[r], mode, tprotos, topk, cos_th,
                                                                  LABEL_SIZE),
                     flops_source="as original-jax (the same work)")


def bench_labeling(preset: Preset, mode: str, batches: Sequence[int], dtype: str = "float32", repeats: int = 3,
                   vectors_per_class: int = 9, topk: int = 3, cos_th: float = 0.5, max_memory_gb: float | None = None,
                   torch_row: bool | str = True, seed: int = 0, weights: str | None = None,
                   labeler: str | Sequence[str] = "paper") -> list[dict[str, Any]]:
    """Pseudo-labels per second, the original's paths vs ours, for each batch size. Returns one dict per
    (batch, path): ``original-torch`` (when torch and draggan are importable, float32 only), ``original-jax``,
    ``ours`` (the paper's labeller), and for each ``labeler`` other than 'paper' (one name or several)
    ``ours-<labeler>``: the same shots and masks, that labeller fitted on them (:mod:`smis_jax.labelers`), timed side by side with ``ours``
    (``cost_vs_paper``: its time per batch over ours').

    ``torch_row``: True includes original-torch where it can run and otherwise says why not (one ``note:`` line on
    stderr, and ``original_torch_left_out`` in every row); a string leaves it out for that reason, said the same
    way; False leaves it out silently (``--no-torch``).

    ``weights``: a rosinality checkpoint or converted directory whose generator replaces the random one (its
    shapes replace the preset's); the speed is the same, but bfloat16 agreement is only meaningful with trained
    weights (random weights give near-identical prototypes, see ``f32_top2_margin_median``). Without ``weights``
    and with the PyTorch path, the random weights are the PyTorch generator's own initialisation, converted to
    ours, so all three paths hold the same weights and their labels can be compared."""
    gcfg = preset.generator
    n_classes = preset.n_classes(mode)
    jdtype = jnp.dtype(dtype)
    device = device_info()
    memory = Memory()
    key_params, key_protos, key_runs = jax.random.split(jax.random.key(seed), 3)
    weights_desc = weights or "random"
    if weights is not None:
        loaded = load_generator(weights)
        gcfg, params32 = loaded.config, loaded.params
    ref, left_out = None, None
    if isinstance(torch_row, str):  # the caller already knows why the path is left out
        left_out = torch_row
    elif torch_row:
        try:
            if dtype != "float32":
                raise reference.Unavailable(f"it runs in float32 only (--dtype {dtype})")
            ref = _torch_reference(gcfg, weights, seed)
        except reference.Unavailable as e:
            left_out = str(e)
    if left_out is not None:  # said once, before the long part, so nobody waits for a row that will not come
        print(f"note: original-torch path left out: {left_out}", file=sys.stderr, flush=True)
    if weights is None:
        if ref is not None:
            params32, weights_desc = jax.tree.map(jnp.asarray, ref.params), "random (PyTorch initialisation)"
        else:
            params32 = init_params(gcfg, key_params)
    params = cast_floats(params32, jdtype)
    protos = make_prototypes(gcfg, params32, mode, n_classes, key_protos, vectors_per_class)
    kinds = [labeler] if isinstance(labeler, str) else list(labeler)
    fitted = {kind: make_labeler(gcfg, params32, mode, n_classes, key_protos, kind, vectors_per_class)
              for kind in kinds if kind != "paper"}
    vecs = vectors_by_class(protos) if mode == "sparse" else None
    n_vectors = int(protos.vectors.shape[0])
    cos = jnp.float32(cos_th)
    dtype_check = generator_dtype_report(gcfg, jdtype) if dtype != "float32" else None
    rows = []
    for batch in batches:
        keys = [jax.random.fold_in(key_runs, r) for r in range(repeats + 1)]
        ours_jit = jax.jit(partial(_ours_labels, gcfg, batch, jdtype, topk, LABEL_SIZE))
        ours_c, ours_compile = aot_compile(ours_jit, params, protos, cos, keys[0])
        ours = TimedPath("ours", lambda r: np.asarray(ours_c(params, protos, cos, keys[r])), ours_compile,
                     *flops_of(ours_c, ours_jit, params, protos, cos, keys[0]), xla_bytes(ours_c))
        if mode == "dense":
            orig_jit = jax.jit(partial(_original_dense_labels, gcfg, batch, jdtype, LABEL_SIZE))
            orig_c, orig_compile = aot_compile(orig_jit, params, protos, keys[0])

            def orig_run(r):
                image, labels = orig_c(params, protos, keys[r])
                jax.block_until_ready(image)
                return np.asarray(labels)

            original = TimedPath("original-jax", orig_run, orig_compile,
                             *flops_of(orig_c, orig_jit, params, protos, keys[0]), xla_bytes(orig_c))
        else:
            render_jit = jax.jit(partial(_original_render, gcfg, batch, jdtype))
            render_c, orig_compile = aot_compile(render_jit, params, keys[0])
            render_flops, render_source = flops_of(render_c, render_jit, params, keys[0])
            stages = {"render": [], "label": []}

            def orig_run(r):
                t = time.perf_counter()
                image, features = render_c(params, keys[r])
                jax.block_until_ready((image, features))
                t_render = time.perf_counter()
                labels = original_sparse_labels(features, vecs, topk, cos_th, LABEL_SIZE)
                if r > 0:
                    stages["render"].append(t_render - t)
                    stages["label"].append(time.perf_counter() - t_render)
                return labels

            flops = None if render_flops is None else render_flops + batch * class_pair_flops(
                vecs, FEATURE_RES**2)
            original = TimedPath("original-jax", orig_run, orig_compile, flops,
                             f"{render_source} (render) + analytic (per-class matmuls)", xla_bytes(render_c))
            original.stages = stages
        paths = [original, ours]
        for kind, lab in fitted.items():
            lab_jit = jax.jit(partial(_labeler_labels, gcfg, batch, jdtype, topk, LABEL_SIZE))
            lab_c, lab_compile = aot_compile(lab_jit, params, lab, cos, keys[0])
            paths.append(TimedPath(f"ours-{kind}", partial(lambda c, lab, r: np.asarray(c(params, lab, cos, keys[r])),
                                                           lab_c, lab),
                                   lab_compile, *flops_of(lab_c, lab_jit, params, lab, cos, keys[0]),
                                   xla_bytes(lab_c)))
        torch_path = None
        if ref is not None:
            torch_path = _torch_original_path(ref, gcfg, batch, mode, protos, keys, topk, cos_th)
            torch_path.flops = original.flops
            paths.insert(0, torch_path)
        base = {"config": preset.name, "mode": mode, "batch": batch, "resolution": gcfg.size,
                "feature_res": FEATURE_RES, "label_res": LABEL_SIZE, "n_classes": n_classes,
                "n_prototype_vectors": n_vectors, "topk": topk if mode == "sparse" else None,
                "weights": weights_desc, "original_torch_left_out": left_out, **host_context()}
        skip = check_fits(paths, None if max_memory_gb is None else max_memory_gb * 2**30)
        if skip:
            rows.append({"bench": "labeling", "path": "skipped", **base, "dtype": dtype, **device, "skipped": skip})
            continue
        measure(paths, repeats, memory)
        # The first compile of the per-class device calls happens in the warm-up: report it as compile time.
        if mode == "sparse":
            original.compile_s += max(0.0, original.first_s - median(original.times))
        by_name = {}
        for p in paths:
            row = result_row("labeling", p, base, batch, "labels_per_s", dtype, device)
            if p is torch_path:
                chunked = f", rendered in chunks of {reference.MAX_CHUNK}" if batch > reference.MAX_CHUNK else ""
                row.update(compile_s=0.0, note="PyTorch %s, rosinality's generator (draggan's copy) + psp.py's "
                           "labelling, torch threads=%d%s" % (ref.torch_version, ref.threads, chunked))
            by_name[p.name] = row
            rows.append(row)
        ours_row, orig_row = by_name["ours"], by_name["original-jax"]
        ours_labels = np.asarray(ours.first_out)
        ours_row["speedup_vs_original_jax"] = orig_row["time_s_median"] / ours_row["time_s_median"]
        ours_row["agree_with_original_jax"] = float(np.mean(ours_labels == np.asarray(original.first_out)))
        if torch_path is not None:
            torch_row_ = by_name["original-torch"]
            torch_labels = np.asarray(torch_path.first_out)
            for row, out in ((ours_row, ours_labels), (orig_row, np.asarray(original.first_out))):
                row["speedup_vs_original_torch"] = torch_row_["time_s_median"] / row["time_s_median"]
                row["agree_with_original_torch"] = float(np.mean(out == torch_labels))
        ours_row["labelled_fraction"] = float(np.mean(ours_labels > 0)) if mode == "sparse" else None
        for kind in fitted:
            lab_row = by_name[f"ours-{kind}"]
            lab_row["cost_vs_paper"] = lab_row["time_s_median"] / ours_row["time_s_median"]
            lab_row["labeler"] = kind
            lab_path = next(p for p in paths if p.name == f"ours-{kind}")
            lab_row["labelled_fraction"] = float(np.mean(np.asarray(lab_path.first_out) > 0)) \
                if mode == "sparse" else None
        if dtype != "float32":
            ref_c = jax.jit(partial(_ours_labels, gcfg, batch, jnp.float32, topk, LABEL_SIZE))
            ref32 = np.asarray(ref_c(params32, protos, cos, keys[0]))
            ours_row["agree_with_float32"] = float(np.mean(ours_labels == ref32))
            if mode == "sparse":  # agreement on the labelled pixels alone (the unlabelled majority agrees trivially)
                either = (ours_labels > 0) | (ref32 > 0)
                ours_row["agree_with_float32_labelled"] = float(np.mean(ours_labels[either] == ref32[either])) \
                    if either.any() else None
            ours_row["generator_dtype"] = dtype_check
            if mode == "dense":
                ours_row.update(_dense_margins(gcfg, params32, protos, batch, keys[0]))
    return rows


def _dense_margins(gcfg: GeneratorConfig, params32, protos: labeling.DensePrototypes, batch: int, key):
    """How close the float32 dense decisions are: the median gap between the best and second-best cosine per
    pixel, and the median cosine between prototypes (bfloat16 flips labels where the gap is small)."""
    @jax.jit
    def gaps(params, protos, key):
        _, features, _ = sample(gcfg, params, key, batch, FEATURE_RES, jnp.float32)
        top2 = jax.lax.top_k(labeling.cosine_scores(features, protos), 2)[0]
        return top2[..., 0] - top2[..., 1]

    v = np.asarray(protos.vectors)[np.asarray(protos.present)]
    pair = (v @ v.T)[~np.eye(len(v), dtype=bool)]
    return {"f32_top2_margin_median": float(np.median(np.asarray(gaps(params32, protos, key)))),
            "prototype_pairwise_cos_median": float(np.median(pair)) if pair.size else None}


def channel_multiplier(gcfg: GeneratorConfig) -> int:
    return max(1, gcfg.channel(FEATURE_RES) // 256) if FEATURE_RES in gcfg.resolutions else 2

