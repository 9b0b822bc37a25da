"""Mask-to-image synthesis with a pSp / Fewshot-SMIS checkpoint (the original's ``scripts/inference.py``).

    python -m smis_jax.synthesize --checkpoint ckpt/celeba --masks labels/ --out results/ --grid
    python -m smis_jax.synthesize --checkpoint ckpt/celeba --masks a.png b.png --out results/ \\
        --styles 4 --latent-mask 8,9,10,11,12,13,14,15,16,17 --seed 1

Each label PNG (grey value = class id, read exactly as the original: NEAREST-resized to 256) is one-hot
encoded, encoded to W+ (eval-mode encoder + latent_avg) and decoded by the checkpoint's generator; the image
is average-pooled to 256x256 (pSp's ``face_pool``, ``ops.adaptive_avg_pool``) and written to ``OUT/<name>.png``.

Without ``--styles`` the generator uses the checkpoint's stored noise buffers, as the original inference does.
With ``--styles N`` each mask gets N variants ``OUT/<name>_s{k}.png``: a random z -> mapping -> w replaces the
W+ layers in ``--latent-mask`` (default 8..style_num-1, the README's recipe; ``--alpha`` blends instead of
replacing; ``--truncation`` psi pulls that w towards the mean w), with fresh noise. Every random draw comes from
``--seed`` and the mask's position in the sorted input list, so results do not depend on ``--batch-size``.
``--grid`` also writes ``OUT/grid/<name>.png`` = [colourised mask | outputs], titled, with a class legend.

``--refine original|wplus|fs --refine-steps N`` (default off: synthesis as the paper's) refines each mask's W+
before decoding (:mod:`smis_jax.refine`): ``original`` is the extended release's ``inference_w_post.py`` (layer-0
PCA coefficients, 200 updates by default), ``wplus`` ours (all of W+, a label-space loss, 50 updates by default),
``fs`` ours (a spatial offset on the 8x8 block, on the encoder's codes, 50 updates). It needs an export written by
``train.run`` (its prototypes or linear labeller). Styles (``--styles``) mix into the refined codes (and keep an
``fs`` offset).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import data, export, labelers, refine as refinement, viz
from smis_jax.config import DOMAINS
from smis_jax.errors import InvalidValueError, MissingFileError, UserError
from smis_jax.files import check_writable
from smis_jax.io import load_pipeline
from smis_jax.nets import ops, stylegan2
from smis_jax.precision import DEFAULT as DEFAULT_PRECISION, PRECISIONS, policy as precision_policy
from smis_jax.progress import progress

__all__ = ["OUTPUT_SIZE", "default_latent_mask", "latent_mask_array", "mix_latents", "synthesize", "encode", "decode",
           "collect_masks", "run", "main"]

OUTPUT_SIZE = 256  # pSp's face_pool target


def default_latent_mask(style_num: int) -> list[int]:
    """Layers 8..style_num-1: the fine layers the README mixes (8..17 for faces, 8..13 for 256px models)."""
    return list(range(min(8, style_num), style_num))


def domain_latent_mask(pipeline) -> list[int]:
    """The layers multi-modal synthesis replaces by default: the export's domain's (``Domain.latent_mask``; 6..9
    for the built-in 64 px domains), else :func:`default_latent_mask`."""
    style_num = pipeline.encoder.config.style_num
    domain = export_domain(pipeline)
    if domain is not None and domain.style_num == style_num:
        return list(domain.latent_mask)
    return default_latent_mask(style_num)


def latent_mask_array(latent_mask: Sequence[int] | None, style_num: int, warn: bool = True) -> np.ndarray:
    """Layer indices -> bool (style_num,). Indices >= style_num are dropped with a warning (as the original)."""
    if latent_mask is None:
        latent_mask = default_latent_mask(style_num)
    idx = [int(i) for i in latent_mask]
    if any(i < 0 for i in idx):
        raise InvalidValueError(f"latent mask indices must be >= 0, got {idx}")
    dropped = sorted(i for i in idx if i >= style_num)
    if dropped and warn:
        warnings.warn(f"latent mask indices {dropped} are >= style_num {style_num} and are ignored", stacklevel=2)
    mask = np.zeros(style_num, bool)
    mask[[i for i in idx if i < style_num]] = True
    return mask


def mix_latents(codes: jax.Array, w: jax.Array, mask: jax.Array, alpha) -> jax.Array:
    """The original's latent_mask injection: codes (B, S, D) (latent_avg included), w (B, D), mask (S,) bool.

    Layers in ``mask`` become ``alpha * w + (1 - alpha) * codes`` (alpha = 1: replaced by w); others are kept.
    """
    mixed = alpha * w[:, None, :] + (1 - alpha) * codes
    return jnp.where(mask[None, :, None], mixed, codes)


@functools.lru_cache(maxsize=None)
def _decode_fn(gen_cfg, styles: int, random_noise: bool):
    """One jitted codes -> images function per (generator, styles, noise mode); weights, masks, keys are arguments.

    The encoder runs in its own jitted function (:meth:`smis_jax.nets.psp.LoadedEncoder.encode`), shared by every mode.
    """
    generator = stylegan2.Generator(gen_cfg)

    def fn(codes, latent_avg, gen_params, stored_noise, key, first_index, mask, alpha, psi, offsets):
        codes = codes + latent_avg  # (B, S, D)
        b = codes.shape[0]
        sample_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first_index + jnp.arange(b))  # (B,)
        if styles:
            style_keys = jax.vmap(lambda k: jax.random.split(k, styles))(sample_keys).reshape(b * styles)
            pair = jax.vmap(jax.random.split)(style_keys)  # (B*N, 2): z key, noise key
            z = jax.vmap(lambda k: jax.random.normal(k, (gen_cfg.style_dim,)))(pair[:, 0])  # (B*N, D)
            w = generator.apply(gen_params, z, method=stylegan2.Generator.mapping)  # (B*N, D)
            # Truncation towards the mean w (latent_avg's rows are that mean, repeated); psi = 1 leaves w bit-exact.
            w = jnp.where(psi == 1.0, w, stylegan2.truncate(w, jnp.mean(latent_avg, axis=0), psi))
            codes = mix_latents(jnp.repeat(codes, styles, axis=0), w, mask, alpha)  # (B*N, S, D)
            if offsets is not None:  # a placed layout (offset head, fs) stays under every style
                offsets = {r: jnp.repeat(o, styles, axis=0) for r, o in offsets.items()}
            noise = stylegan2.make_sample_noise(gen_cfg, pair[:, 1])
        elif random_noise:
            noise = stylegan2.make_sample_noise(gen_cfg, sample_keys)
        else:
            noise = stored_noise
        image, _ = generator.apply(gen_params, codes, noise, offsets=offsets)
        image = ops.adaptive_avg_pool(image, (OUTPUT_SIZE, OUTPUT_SIZE))  # face_pool: 1024 -> 4x4 means
        return image.reshape(b, styles, *image.shape[1:]) if styles else image

    return jax.jit(fn)


def synthesize(pipeline, onehot: jax.Array, key: jax.Array, styles: int = 0, latent_mask: Sequence[int] | None = None,
               alpha: float | None = None, noise: str = "const", first_index: int = 0,
               truncation: float = 1.0) -> jax.Array:
    """Masks -> images in [-1, 1]: :func:`encode` then :func:`decode`.

    pipeline: :func:`smis_jax.nets.psp.load_pipeline`'s result. onehot: (B, 256, 256, input_nc) float.
    styles = 0: (B, 256, 256, 3) from the encoder's W+; ``noise`` 'const' (stored buffers, the original's
    inference) or 'random' (from ``key``). styles = N > 0: (B, N, 256, 256, 3); layers in ``latent_mask``
    (default 8..S-1) come from a random sample's w (``alpha``-blended with the encoder's if given, truncated
    towards the mean w by ``truncation`` psi), with random noise. Sample b's randomness is
    ``fold_in(key, first_index + b)``, so a batch split changes nothing.
    """
    codes, offsets = encode_with_offsets(pipeline, onehot)
    return decode(pipeline, codes, key, styles=styles, latent_mask=latent_mask, alpha=alpha, noise=noise,
                  first_index=first_index, truncation=truncation, offsets=offsets)


def encode(pipeline, onehot: jax.Array) -> jax.Array:
    """onehot (B, 256, 256, input_nc) float -> the eval-mode encoder's codes (B, S, D), before latent_avg.

    Masks are read at 256 whatever the encoder's input size; an encoder that reads smaller masks (the built-in
    domains' 64x64) gets each block's most frequent class (:func:`smis_jax.nets.psp.reduce_onehot`; on a sparse
    domain any annotated class before class 0). An encoder with an offset head draws what it places only with
    its offsets: :func:`encode_with_offsets`."""
    return encode_with_offsets(pipeline, onehot)[0]


def encode_with_offsets(pipeline, onehot: jax.Array) -> tuple[jax.Array, dict | None]:
    """:func:`encode`'s codes and the encoder's offsets for :func:`decode` (None for pSp's encoder, which has no
    offset head: ``--offset-res``)."""
    cfg = pipeline.encoder.config
    onehot = jnp.asarray(onehot, jnp.float32)
    if onehot.ndim != 4 or onehot.shape[1:] != (256, 256, cfg.input_nc):
        raise ValueError(f"onehot must be (B, 256, 256, {cfg.input_nc}), got {tuple(onehot.shape)}")
    return pipeline.encoder.encode_with_offsets(onehot, sparse=is_sparse(pipeline))


def export_domain(pipeline):
    """The export's domain preset (its ``opts.dataset_type``), or None when unknown."""
    return DOMAINS.get(str((pipeline.config or {}).get("opts", {}).get("dataset_type")))


def is_sparse(pipeline) -> bool:
    """Whether the export's domain annotates sparsely (class 0 = "not annotated"); False when unknown."""
    domain = export_domain(pipeline)
    return domain is not None and domain.mode == "sparse"


def decode(pipeline, codes: jax.Array, key: jax.Array, styles: int = 0, latent_mask: Sequence[int] | None = None,
           alpha: float | None = None, noise: str = "const", first_index: int = 0,
           truncation: float = 1.0, offsets: dict | None = None) -> jax.Array:
    """:func:`encode`'s codes (B, S, D) -> images, as :func:`synthesize` (one encoding can feed several decodes).
    ``offsets``: the spatial latent of an encoder's offset head (:func:`encode_with_offsets`) or an ``fs`` refinement
    (:class:`smis_jax.refine.Result`), kept under every style; None for none."""
    gen = pipeline.generator
    if styles < 0:
        raise InvalidValueError(f"styles must be >= 0, got {styles}")
    if noise not in ("const", "random"):
        raise InvalidValueError(f"noise must be 'const' or 'random', got {noise!r}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise InvalidValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= truncation <= 1.0:
        raise InvalidValueError(f"truncation must be in [0, 1], got {truncation}")
    if latent_mask is None:
        latent_mask = domain_latent_mask(pipeline)
    mask = latent_mask_array(latent_mask, pipeline.encoder.config.style_num)
    fn = _decode_fn(gen.config, int(styles), styles == 0 and noise == "random")
    return fn(codes, pipeline.latent_avg, gen.params, gen.noises, key, jnp.int32(first_index), jnp.asarray(mask),
              jnp.float32(1.0 if alpha is None else alpha), jnp.float32(truncation), offsets)


def collect_masks(inputs: Sequence[str | Path]) -> list[Path]:
    """Label files from folders (image files, sorted) and explicit files, in the given order; names must be unique."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(data.list_images(p))
        elif p.is_file():
            files.append(p)
        else:
            raise data.DataError(f"{p}: no such file or directory")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise data.DataError(f"two masks would write the same output '{f.stem}': {seen[f.stem]} and {f}")
        seen[f.stem] = f
    if not files:
        raise data.DataError("no masks given")
    return files


def _class_names(export_config: dict, n_classes: int) -> tuple[str, ...]:
    """The export's domain's class names (its ``opts.dataset_type``), or () when unknown or of another length."""
    domain = DOMAINS.get(str((export_config.get("opts") or {}).get("dataset_type")))
    names = tuple(domain.class_names) if domain is not None else ()
    return names if len(names) == n_classes else ()


def run(checkpoint: str | Path, masks: Sequence[str | Path], out: str | Path, styles: int = 0,
        latent_mask: Sequence[int] | None = None, alpha: float | None = None, seed: int = 0, batch_size: int = 8,
        write_grid: bool = False, noise: str | None = None, show_progress: bool = True,
        truncation: float = 1.0, refine: str | None = None, refine_steps: int | None = None,
        refine_scorer: str = "auto") -> list[Path]:
    """The CLI's work: read masks, synthesise in fixed-shape batches, write PNGs (+ grids); returns written files.

    ``refine``: None (off), 'original', 'wplus' or 'fs' (:mod:`smis_jax.refine`), ``refine_steps`` its Adam
    updates (default: the method's), ``refine_scorer`` what ``wplus``/``fs`` score with (:data:`smis_jax.refine.SCORERS`)."""
    if batch_size < 1:
        raise InvalidValueError(f"batch size must be >= 1, got {batch_size}")
    if styles < 0:
        raise InvalidValueError(f"styles must be >= 0, got {styles}")
    if not 0.0 <= truncation <= 1.0:
        raise InvalidValueError(f"truncation must be in [0, 1], got {truncation}")
    options = None if refine is None else refinement.default_options(refine, refine_steps, scorer=refine_scorer)
    files = collect_masks(masks)
    out = check_writable(out, "output folder")  # before the (slow) load, not after it
    if options is None:
        pipeline = load_pipeline(checkpoint)
    else:  # refinement needs the prototypes: only an export written by train.run has them
        if not (Path(checkpoint) / "prototypes").is_dir():
            raise MissingFileError(f"{checkpoint}: --refine needs the class prototypes of an export written by "
                                   f"train.run (its prototypes/ folder); this checkpoint has none")
        run_export = export.load(checkpoint)
        pipeline = run_export.pipeline
        protos, sparse = refinement.prototypes_for(run_export)
        run_labeler = labelers.as_labeler(run_export.prototypes)
        refinement.check_scorer(protos, options, run_labeler)
    refine_losses: list[float] = []
    cfg = pipeline.encoder.config
    noise = noise or ("random" if styles else "const")
    if latent_mask is not None:
        latent_mask_array(latent_mask, cfg.style_num)  # warn about dropped indices once, up front
    key = jax.random.key(seed)
    batch = min(batch_size, len(files))  # one fixed shape: the last batch is padded, never retraced
    starts = list(range(0, len(files), batch))
    written: list[Path] = []
    titles = ["mask"] + (["synthesis"] if not styles else [f"style {k}" for k in range(styles)])
    legend = viz.class_legend(cfg.input_nc, _class_names(pipeline.config, cfg.input_nc))

    def write(start: int, labels: np.ndarray, images) -> None:
        images = viz.to_uint8(np.asarray(images))
        for j, f in enumerate(files[start:start + batch]):
            outs = [images[j]] if not styles else list(images[j])
            names = [f"{f.stem}.png"] if not styles else [f"{f.stem}_s{k}.png" for k in range(styles)]
            for name, im in zip(names, outs):
                written.append(viz.save_png(out / name, im))
            if write_grid:
                cells = [viz.colorize(labels[j])] + outs
                grid = viz.titled_grid(cells, titles, legend=legend)
                written.append(viz.save_png(out / "grid" / f"{f.stem}.png", grid))

    t0 = time.perf_counter()
    pending = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped-index warning was given above
        bar = progress(starts, desc="synthesize", unit="batch", disable=not show_progress)
        for start in bar:
            chunk = files[start:start + batch]
            labels = np.stack([data.read_label(f, cfg.input_nc) for f in chunk])  # (b, 256, 256) uint8
            if len(chunk) < batch:
                labels = np.concatenate([labels, np.repeat(labels[-1:], batch - len(chunk), axis=0)])
            codes, offsets = encode_with_offsets(pipeline, data.onehot(jnp.asarray(labels), cfg.input_nc))
            if options is not None:
                refined = refinement.refine(pipeline.generator, protos, codes + pipeline.latent_avg, labels, options,
                                            sparse=sparse, labeler=run_labeler, offsets=offsets)
                codes, offsets = refined.w_plus - pipeline.latent_avg, refined.offsets
                refine_losses.extend(float(v) for v in refined.losses[: len(chunk), -1])
            images = decode(pipeline, codes, key, styles=styles, latent_mask=latent_mask, alpha=alpha, noise=noise,
                            first_index=start, truncation=truncation, offsets=offsets)
            if pending is not None:  # write the previous batch while this one computes
                write(*pending)
            pending = (start, labels, images)
        if pending is not None:
            write(*pending)
    info = {"checkpoint": str(checkpoint), "masks": len(files), "styles": styles,
            "latent_mask": [int(i) for i in np.flatnonzero(latent_mask_array(latent_mask, cfg.style_num, warn=False))]
            if styles else None, "alpha": alpha, "truncation": truncation, "noise": noise, "seed": seed,
            "batch_size": batch,
            "refine": None if options is None else {"method": options.method, "steps": options.steps,
                                                    "scorer": refinement.resolve_scorer(options, run_labeler),
                                                    "final_loss": refine_losses},
            "seconds": round(time.perf_counter() - t0, 3), "device": jax.devices()[0].device_kind}
    (out / "synthesize.json").write_text(json.dumps(info, indent=1))
    return written


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 8,9,10, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smis_jax.synthesize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="converted pSp directory (python -m convert psp) or a .pt")
    parser.add_argument("--masks", required=True, nargs="+", help="label PNG files and/or folders of them")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--styles", type=int, default=0, help="N multi-modal variants per mask (default: 0, one image)")
    parser.add_argument("--latent-mask", type=_int_list, default=None,
                        help="W+ layers taken from the random sample with --styles (default 8..style_num-1)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="blend alpha*sample + (1-alpha)*encoder on those layers (default: replace them)")
    parser.add_argument("--truncation", type=float, default=1.0,
                        help="with --styles: pull the random w towards the mean w by psi in [0, 1] (default 1: none)")
    parser.add_argument("--noise", choices=("const", "random"), default=None,
                        help="generator noise (default: const = stored buffers without --styles, random with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grid", action="store_true", help="also write OUT/grid/<name>.png = [mask | outputs]")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help=f"float32 matmul/conv precision (default {DEFAULT_PRECISION}: full float32)")
    parser.add_argument("--refine", choices=refinement.METHODS, default=None,
                        help="refine each mask's W+ before decoding: 'original' (the extended release's "
                             "inference_w_post.py), 'wplus' (ours) or 'fs' (ours: an 8x8 spatial offset on the codes, "
                             "best on the built-in domain); default off. Needs a train.run export")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refinement updates (default: original 200, wplus and fs 50)")
    parser.add_argument("--refine-scorer", choices=refinement.SCORERS, default="auto",
                        help="what 'wplus' and 'fs' score the features with: the run's linear labeller ('labeler'), the "
                             "prototypes' cosine ('prototypes'), or 'auto' (default): the labeller where the run "
                             "has a linear one")
    args = parser.parse_args(argv)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
            with precision_policy(args.precision):
                written = run(args.checkpoint, args.masks, args.out, styles=args.styles, latent_mask=args.latent_mask,
                              alpha=args.alpha, seed=args.seed, batch_size=args.batch_size, write_grid=args.grid,
                              noise=args.noise, truncation=args.truncation, refine=args.refine,
                              refine_steps=args.refine_steps, refine_scorer=args.refine_scorer)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
