"""The few-shot pipeline end to end: shots -> inversion -> prototypes -> encoder training -> export.

``train_and_evaluate`` is what ``python -m train.run`` calls. A run's folder (``workdir``) holds::

    config.json        the resolved configuration, the generator/encoder architectures, devices, versions
    inversion/         one .npz per shot: its W+ codes, loss, step count and the generator's fingerprint
    checkpoints/N/     orbax: encoder params, BatchNorm stats, Ranger state, step, key, prototypes, run record
    metrics.jsonl      one JSON object per log interval (and per evaluation)
    events.out.tfevents.*  the same scalars, the preview grids and config.json for TensorBoard (``smis_jax.tblog``)
    curves.png         the loss, mIoU and inversion curves (``smis_jax.plots.run_curves``), drawn at the end
    images/            preview grids: pseudo-label | sample | reconstruction from the pseudo-label
    export/            self-contained: encoder, generator, latent_avg, prototypes, shot codes, the run record
                       (``smis_jax.export``; what synthesis, the editor and evaluation read)

With several processes (``train.run --distributed``) every process runs all of it on its share of the global mesh;
process 0 alone writes config.json, metrics.jsonl, the inversion cache, images/ and export/ (``smis_jax.hosts``),
and every process takes part in the orbax checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smis_jax import builtin, data, export, hosts, info, interrupt, labelers, plots, precision, tblog, viz
from smis_jax.builtin import shapes
from smis_jax.config import ENCODER_SIZES, ConfigError, Domain, TrainConfig
from smis_jax.export import ShotCodes
from smis_jax.errors import MissingFileError
from smis_jax.files import FolderError, check_writable
from smis_jax.inversion import cache_settings, invert_cached, read_cache
from smis_jax.io import load_generator, load_lpips
from smis_jax.metrics import self_consistency, synthesis_truth
from smis_jax.nets import stylegan2
from smis_jax.nets.psp import EncoderConfig
from smis_jax.progress import Progress, progress
from smis_jax.training import (
    Checkpointer,
    StepConfig,
    TrainingError,
    abstract_train_state,
    data_mesh,
    init_train_state,
    make_preview,
    make_train_step,
    state_sharding,
)

__all__ = ["Shots", "load_shots", "load_test_masks", "encoder_config", "domain_generator", "train_and_evaluate",
           "run_generator", "RunCheckpoint", "restore_checkpoint", "export_checkpoint"]

# Fields that may change when a run is resumed (how long and how often); anything else must match.
RESUMABLE_CHANGES = {"max_steps", "save_every", "log_every", "image_every", "eval_every", "keep_checkpoints"}


@dataclass(frozen=True)
class Shots:
    names: tuple[str, ...]
    images: np.ndarray  # (K, 256, 256, 3) float32 in [-1, 1] (built-in domains: (K, 64, 64, 3))
    labels: np.ndarray  # (K, 256, 256) uint8 class ids


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise data.DataError(f"{path}: {what} not found")
    return path


def load_shots(data_dir: str | Path, domain: Domain, shots: int | Sequence[str],
               log: Callable[[str], None] = print) -> Shots:
    """The annotated training pairs in ``data_dir/train/{images,labels}``, paired by name.

    ``shots``: the first K pairs by name, or a list of basenames (without extension). Warns (``log``) about a label
    whose aspect ratio differs from its image's (both are resized to a square, so one of them is distorted) and, for a
    sparse domain, about a label with no unannotated (class 0) pixel (a dense mask given to a sparse domain?).
    """
    root = _require_dir(Path(data_dir), "data folder")
    pairs = data.paired_files(_require_dir(root / "train" / "images", "training images folder"),
                              _require_dir(root / "train" / "labels", "training labels folder"))
    if isinstance(shots, int):
        if shots > len(pairs):
            raise data.DataError(f"{root}: --shots {shots} asks for more pairs than the {len(pairs)} in train/")
        pairs = pairs[:shots]
    else:
        by_name = {img.stem: (img, lab) for img, lab in pairs}
        missing = [s for s in shots if s not in by_name]
        if missing:
            raise data.DataError(f"{root}: no training pair named {missing[0]!r} (have: {', '.join(by_name)})")
        pairs = [by_name[s] for s in shots]
    for img, lab in pairs:
        size, label_size = _image_size(img), _image_size(lab)
        if size is None or label_size is None:
            continue
        (w, h), (lw, lh) = size, label_size
        if w * lh != h * lw:
            log(f"warning: {lab}: label is {lw}x{lh} but its image {img.name} is {w}x{h}; both are resized to a "
                f"square, so their aspect ratios no longer match")
    images = np.stack([data.read_image(img) for img, _ in pairs])
    labels = np.stack([data.read_label(lab, domain.n_classes) for _, lab in pairs])
    if domain.mode == "sparse":
        for (_, lab), lab_ids in zip(pairs, labels):
            if (lab_ids > 0).all():
                log(f"warning: {lab}: every pixel is annotated (no class 0), but domain '{domain.name}' expects sparse "
                    f"masks (scribbles or points on class 0); is it a dense mask?")
    return Shots(tuple(img.stem for img, _ in pairs), images, labels)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header; None if unreadable (read_image/read_label then say why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def load_test_masks(paths: Sequence[str | Path], n_classes: int) -> tuple[list[str], np.ndarray]:
    """Label PNGs from files and/or folders: (names, (N, 256, 256) uint8)."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(data.list_images(p) if p.is_dir() else [p])
    if not files:
        return [], np.zeros((0, 256, 256), np.uint8)
    return [f.stem for f in files], np.stack([data.read_label(f, n_classes) for f in files])


def encoder_config(cfg: TrainConfig, gen_config: stylegan2.GeneratorConfig) -> EncoderConfig:
    """The encoder a run of ``cfg`` trains for a generator of ``gen_config`` (also what the benches build)."""
    widths, units = ENCODER_SIZES[cfg.encoder]
    channels = dict(gen_config.channels)
    if cfg.offset_res and cfg.offset_res not in channels:
        raise ConfigError(f"offset_res {cfg.offset_res}: the {gen_config.size}px generator has no such block "
                          f"(blocks {sorted(channels)})")
    return EncoderConfig(input_nc=cfg.domain_preset.n_classes, style_num=gen_config.n_latent,
                         widths=widths, units=units, style_dim=gen_config.style_dim, input_size=cfg.mask_size,
                         offset_res=cfg.offset_res,
                         # the width of the generator's block the head shifts (0 without a head)
                         offset_channels=int(channels[cfg.offset_res]) if cfg.offset_res else 0)


def domain_generator(path: str | Path, domain: Domain, size: int | None = None) -> stylegan2.LoadedGenerator:
    """``stylegan2.load`` (a .pt, an NVIDIA .pkl or a converted folder), checked against the expected output size:
    ``size`` if given (a run's ``generator_size``), else the domain preset's default."""
    g = load_generator(path)
    if size is not None and size != g.config.size:
        raise ConfigError(f"--generator-size {size} given, but {path} is a {g.config.size}px generator")
    if size is None and g.config.size != domain.generator_size:
        raise ConfigError(
            f"domain '{domain.name}' expects a {domain.generator_size}px generator ({domain.stylegan}), but {path} is "
            f"{g.config.size}px; pass --generator-size {g.config.size} to use it anyway, or pick the matching "
            f"--domain or checkpoint")
    return g


def _check_resume(saved: dict[str, Any], cfg: TrainConfig, source: Path | str) -> None:
    """One ConfigError naming every setting that differs from the run being resumed (both values), if any."""
    new = cfg.to_dict()
    changed = [f"{key} {value!r} -> {new.get(key)!r}" for key, value in saved.items()
               if key not in RESUMABLE_CHANGES and key != "extra" and new.get(key) != value]
    # a run recorded before a setting existed ran with the setting's default (TrainConfig's, not a domain schedule's)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed += [f"{key} (not set) -> {new[key]!r}" for key in new
                if key not in saved and key not in RESUMABLE_CHANGES and key != "extra"
                and new[key] != defaults.get(key, dataclasses.MISSING)]
    if changed:
        raise ConfigError(f"cannot resume {source}: changed setting(s) {'; '.join(changed)} (only "
                          f"{', '.join(sorted(RESUMABLE_CHANGES))} may change; pass the run's own values to continue "
                          f"it, or use another --workdir for a new run)")


def _check_run_folder(workdir: Path, resume: bool) -> dict[str, Any] | None:
    """Before any work: with ``resume``, that there is a run to resume and that its settings are the same (returns
    its config.json record); always, that the run folder and its existing subfolders can be written."""
    record = None
    record_file = workdir / "config.json"
    if resume:
        if not workdir.is_dir() or not any(workdir.iterdir()):
            state = "empty" if workdir.is_dir() else "missing"
            raise ConfigError(f"--resume: {workdir} holds no run to resume ({state} folder); start the run without "
                              f"--resume")
        if record_file.is_file():
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"--resume: {record_file} cannot be read ({e})") from None
    check_writable(workdir, "run folder")
    for sub in ("checkpoints", "inversion", "images", "export"):
        if (workdir / sub).exists():
            check_writable(workdir / sub, "run subfolder")
    for name in ("config.json", "metrics.jsonl"):
        if (workdir / name).exists() and not os.access(workdir / name, os.W_OK):
            raise FolderError(f"{workdir / name}: cannot be written")
    return record


def _forget_metrics_after(path: Path, step: int, log: Callable[[str], None]) -> None:
    """Drop the metrics lines of steps after ``step`` (logged by a run that stopped before saving them), so that the
    resumed run's lines are the only ones for those steps; rewritten atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            later = int(json.loads(line).get("step", 0)) > step
        except (ValueError, AttributeError):
            later = False  # a torn last line of a killed run: dropped below if it follows a later step
        if not later and line.endswith("\n"):
            keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)
        log(f"metrics.jsonl: dropped {len(lines) - len(keep)} line(s) after step {step} (not in any checkpoint)")


class _JsonlWriter:
    """Appends one JSON line per record, on the writer process only (the others drop their identical records), and
    gives its scalars to ``events`` (TensorBoard)."""

    def __init__(self, path: Path, events: tblog.EventLog | None = None):
        self.file = open(path, "a", buffering=1) if hosts.is_writer() else None
        self.events = events

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
        if self.events is not None:
            self.events.record(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _mean_metrics(metrics: list[dict[str, Any]], first_step: int) -> dict[str, float]:
    host = jax.device_get(metrics)
    for i, m in enumerate(host):
        if not math.isfinite(float(m["loss"])):
            raise TrainingError(f"non-finite loss {float(m['loss'])} at step {first_step + i + 1}; stopping "
                                f"(the last checkpoint is intact)")
    return {k: float(np.mean([float(m[k]) for m in host])) for k in host[0]}


def train_and_evaluate(cfg: TrainConfig, data_dir: str | Path | None, stylegan: str | Path | None,
                       workdir: str | Path, *,
                       resume: bool = False, overwrite_inversion: bool = False, lpips_weights: str | Path | None = None,
                       eval_masks: Sequence[str | Path] | None = None, devices=None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a few-shot training run; returns a summary (final step, last metrics, evaluation).

    Built-in domains take ``data_dir=None`` (procedural shots and test masks) and ``stylegan=None`` (the shipped
    generator)."""
    domain = cfg.domain_preset
    workdir = Path(workdir)
    if (data_dir is None or stylegan is None) and not domain.builtin:
        raise ConfigError(f"domain '{domain.name}' needs a data folder and a StyleGAN2 checkpoint")
    log(info.summary())
    stylegan = builtin.generator_path() if stylegan is None else stylegan
    data_dir = None if data_dir is None else Path(data_dir)
    ckpt_dir = workdir / "checkpoints"
    record = _check_run_folder(workdir, resume)
    if record is not None:
        _check_resume(record.get("train", {}), cfg, workdir / "config.json")
    existing = _latest_checkpoint(ckpt_dir)
    if existing is not None and not resume:
        raise ConfigError(f"{workdir} already holds checkpoints up to step {existing}; pass --resume to continue "
                          f"that run or choose another --workdir")
    if resume and existing is None:
        log(f"--resume: no checkpoint in {ckpt_dir} yet; starting at step 0 (finished inversions are reused)")

    generator = domain_generator(stylegan, domain, cfg.generator_size)
    if data_dir is None:
        shots = Shots(*builtin.shots(domain, cfg.shots))
    else:
        shots = load_shots(data_dir, domain, cfg.shots, log=log)
    eval_truth = None  # built-in domains: the held-out masks' exact dense truth, scored by the oracle at each eval
    if eval_masks is None and data_dir is None:
        eval_names, eval_labels, eval_truth = builtin.test_masks(domain)
    else:
        if eval_masks is None:
            test_dir = data_dir / "test" / "labels"
            eval_masks = [test_dir] if test_dir.is_dir() else []
        eval_names, eval_labels = load_test_masks(eval_masks, domain.n_classes)

    enc_config = encoder_config(cfg, generator.config)
    mesh = data_mesh(devices)
    step_cfg = StepConfig.of(cfg, generator.config, enc_config)
    workdir.mkdir(parents=True, exist_ok=True)
    run_record = {
        "train": cfg.to_dict(),
        "data": "built-in" if data_dir is None else str(data_dir.absolute()),
        "stylegan": str(Path(stylegan).absolute()),
        "shots": list(shots.names),
        "generator": generator.config.to_json(),
        "encoder": enc_config.to_json(),
        "devices": [str(d) for d in mesh.devices.flat],
        "versions": info.versions(),
        "backend": info.backend(),
        # the float32 matmul/conv precision in effect (train.run applies cfg.precision) and the host
        "matmul_precision": jax.config.jax_default_matmul_precision or "default", "machine": precision.machine(),
        "command": sys.argv,
    }
    hosts.barrier("run folder checked")  # every process has read config.json; the writer may now replace it
    if hosts.is_writer():
        (workdir / "config.json").write_text(json.dumps(run_record, indent=1))
    latent_avg = jnp.broadcast_to(generator.truncation_latent(), (generator.config.n_latent, generator.config.style_dim))

    checkpointer = Checkpointer(ckpt_dir, max_to_keep=cfg.keep_checkpoints)
    if existing is not None:
        state, protos, meta = checkpointer.restore_intact(abstract_train_state(step_cfg, state_sharding(mesh)), log)
        _check_resume(meta["train"], cfg, ckpt_dir)
        log(f"resuming from step {int(state.step)} ({ckpt_dir})")
        if hosts.is_writer():
            _forget_metrics_after(workdir / "metrics.jsonl", int(state.step), log)
        cached = read_cache(workdir / "inversion", shots.names, _inversion_settings(cfg, generator, shots), log) \
            if hosts.is_writer() else None  # the writer alone writes the export that holds them
        shot_codes = None if cached is None else ShotCodes(shots.names, cached.w_plus, cached.loss, cached.history)
    else:
        protos, shot_codes = _build_prototypes(cfg, domain, generator, shots, workdir, overwrite_inversion,
                                               lpips_weights, log)
        state = init_train_state(step_cfg, cfg.seed)

    state, gen_params, protos, latent_avg = hosts.replicate((state, generator.params, protos, latent_avg), mesh)
    step_fn = make_train_step(step_cfg, mesh)
    preview_fn = make_preview(step_cfg)
    start = int(jax.device_get(state.step))
    if resume and existing is None and hosts.is_writer():  # killed before its first checkpoint: no line survives
        _forget_metrics_after(workdir / "metrics.jsonl", start, log)
    events = tblog.EventLog(workdir, resume_step=start if resume else None)  # after `start`: removed, as above
    events.config(start, run_record)
    metrics_log = _JsonlWriter(workdir / "metrics.jsonl", events)
    if hosts.is_writer():
        (workdir / "images").mkdir(exist_ok=True)
    meta = {"train": cfg.to_dict()}
    pending: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    evaluation: dict[str, Any] | None = None
    t_last, steps_since = time.perf_counter(), 0
    bar = progress(range(start, cfg.max_steps), desc="train" if start == 0 else f"train (resumed at {start})",
                   unit="step")
    try:
        for step in bar:
            interrupt.check()  # Ctrl-C: stop between steps (the finally below completes a save under way)
            state, metrics = step_fn(state, gen_params, protos, latent_avg)
            pending.append(metrics)
            steps_since += 1
            done = step + 1
            save_now = done % cfg.save_every == 0 or done == cfg.max_steps
            if save_now:  # on disk before its metrics line: metrics.jsonl never claims a step a failed save lost
                checkpointer.save_now(state, protos, meta)
            if done % cfg.log_every == 0 or save_now:
                last = _mean_metrics(pending, done - len(pending))
                pending = []
                elapsed = time.perf_counter() - t_last
                last["steps_per_s"] = steps_since / elapsed
                t_last, steps_since = time.perf_counter(), 0
                metrics_log.write({"step": done, **last})
                bar.postfix = f"loss {last['loss']:.4g}"
            if done % cfg.image_every == 0 or done == cfg.max_steps:
                _save_preview(preview_fn, state, gen_params, protos, latent_avg, cfg, done, workdir, events)
            if eval_names and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                enc_vars = {"params": state.params, "batch_stats": state.batch_stats}
                evaluation = self_consistency(enc_config, enc_vars, generator.config, generator.params,
                                              generator.noises, latent_avg, protos, eval_labels,
                                              batch_size=cfg.batch_size)
                record = {"step": done, "eval/miou": evaluation["miou"], "eval/per_class": evaluation["per_class"]}
                if eval_truth is not None:
                    truth = synthesis_truth(enc_config, enc_vars, generator.config, generator.params,
                                            generator.noises, latent_avg, eval_labels, eval_truth, shapes.segment,
                                            len(shapes.CLASS_NAMES), sparse=domain.mode == "sparse",
                                            batch_size=cfg.batch_size)
                    record.update({"eval/truth_miou": truth["miou"], "eval/truth_accuracy": truth["accuracy"],
                                   "eval/truth_per_class": truth["per_class"]})
                    evaluation["truth"] = truth
                metrics_log.write(record)
                log(f"step {done}: self-consistency mIoU {evaluation['miou']:.4f} on {len(eval_names)} masks"
                    + ("" if eval_truth is None else f"; on ground truth (oracle) {evaluation['truth']['miou']:.4f}"))
    finally:
        try:
            checkpointer.wait()
            checkpointer.close()
        except Exception:  # noqa: BLE001 - a failed save already raised its one line; do not mask it
            pass
        metrics_log.close()
        events.close()
        bar.close()

    export_dir = workdir / "export"
    if hosts.is_writer():
        if export_dir.exists():
            shutil.rmtree(export_dir)
        _write_export(export_dir, cfg, enc_config, state, generator, latent_avg, protos, shot_codes,
                      "built-in" if data_dir is None else str(data_dir.absolute()))
        plots.write_run_curves(workdir, inversion=shot_codes)
    hosts.barrier("export written")  # when this returns on any process, export/ is whole
    log(f"done at step {int(jax.device_get(state.step))}; synthesis checkpoint in {export_dir}")
    return {"step": int(jax.device_get(state.step)), "metrics": last, "evaluation": evaluation,
            "export": str(export_dir)}


def _write_export(out: Path, cfg: TrainConfig, enc_config: EncoderConfig, state, generator, latent_avg, protos,
                  shot_codes: ShotCodes | None, data: str) -> Path:
    domain, step = cfg.domain_preset, int(jax.device_get(state.step))
    return export.write(out, enc_config, state, generator, latent_avg,
                        {"dataset_type": domain.name, "label_nc": domain.n_classes,
                         "style_num": enc_config.style_num, "start_from_latent_avg": True, "steps": step},
                        run={"train": cfg.to_dict(), "domain": domain.name, "class_names": list(domain.class_names),
                             "step": step, "data": data},
                        prototypes=protos, shots=shot_codes)


def run_generator(workdir: str | Path, record: dict[str, Any]) -> tuple[stylegan2.LoadedGenerator, np.ndarray]:
    """(generator, latent_avg (S, D)) a run folder trained with: its export's when it has one (the weights it
    shipped), else the file named in its ``config.json`` (``record``)."""
    workdir = Path(workdir)
    cfg = TrainConfig.from_dict(record["train"])
    if (workdir / "export" / "config.json").is_file():
        pipeline = export.load(workdir / "export").pipeline
        g, latent_avg = pipeline.generator, np.asarray(pipeline.latent_avg)
        # as the run loaded it: its truncation latent is the export's latent_avg row
        return stylegan2.LoadedGenerator(g.config, g.params, g.noises, latent_avg[0]), latent_avg
    generator = domain_generator(record["stylegan"], cfg.domain_preset, cfg.generator_size)
    return generator, np.broadcast_to(generator.truncation_latent(),
                                      (generator.config.n_latent, generator.config.style_dim))


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a ``train.run`` folder, restored with what reads it (:func:`restore_checkpoint`)."""
    record: dict[str, Any]  # the run's config.json
    cfg: TrainConfig
    generator: stylegan2.LoadedGenerator
    latent_avg: np.ndarray  # (S, D)
    enc_config: EncoderConfig
    state: Any  # TrainState on one local device
    protos: Any  # the run's labeller

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))


def restore_checkpoint(workdir: str | Path, step: int | None = None) -> RunCheckpoint:
    """Checkpoint ``step`` (default: the latest) of a ``train.run`` folder, on one local device, with the run's
    record, config, generator (:func:`run_generator`) and encoder config."""
    workdir = Path(workdir)
    record_file = workdir / "config.json"
    if not record_file.is_file():
        raise MissingFileError(f"{workdir}: not a training run (no config.json)")
    record = json.loads(record_file.read_text())
    cfg = TrainConfig.from_dict(record["train"])
    generator, latent_avg = run_generator(workdir, record)
    enc_config = EncoderConfig.from_json(record["encoder"])
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        sharding = state_sharding(data_mesh(jax.local_devices()[:1]))
        state, protos, _ = checkpointer.restore(
            abstract_train_state(StepConfig.of(cfg, generator.config, enc_config), sharding), step)
    finally:
        checkpointer.close()
    return RunCheckpoint(record, cfg, generator, latent_avg, enc_config, state, protos)


def export_checkpoint(workdir: str | Path, step: int | None = None, out_dir: str | Path | None = None,
                      log: Callable[[str], None] = print) -> Path:
    """Write checkpoint ``step`` (default: the latest) of a ``train.run`` folder as an export, as the run writes its
    last step into ``export/``: the encoder, the generator, the prototypes, the run record and (when the run's
    inversion cache still holds them) the shots' codes. ``out_dir`` defaults to ``WORKDIR/step-N/export``. Every
    reader of an export (synthesize, the editor, evaluate) then serves that step."""
    workdir = Path(workdir)
    ckpt = restore_checkpoint(workdir, step)
    cfg, generator = ckpt.cfg, ckpt.generator
    shot_codes = None
    if ckpt.record.get("data") == "built-in":
        shots = Shots(*builtin.shots(cfg.domain_preset, cfg.shots))
        cached = read_cache(workdir / "inversion", shots.names, _inversion_settings(cfg, generator, shots), log)
        if cached is not None:
            shot_codes = ShotCodes(shots.names, cached.w_plus, cached.loss, cached.history)
    out = Path(out_dir) if out_dir is not None else workdir / f"step-{ckpt.step}" / "export"
    if out.exists():
        shutil.rmtree(out)
    _write_export(out, cfg, ckpt.enc_config, ckpt.state, generator, ckpt.latent_avg, ckpt.protos, shot_codes,
                  ckpt.record.get("data", "built-in"))
    log(f"step {ckpt.step} of {workdir} exported to {out}")
    return out


def _latest_checkpoint(ckpt_dir: Path) -> int | None:
    if not ckpt_dir.is_dir():
        return None
    checkpointer = Checkpointer(ckpt_dir)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _inversion_settings(cfg: TrainConfig, generator, shots: Shots) -> list[dict[str, Any]]:
    """What the shots' inversion cache is keyed on, for this run (the key as :func:`_build_prototypes` draws it)."""
    key_inv, _ = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1))
    return cache_settings(generator, shots.images, key_inv, steps=cfg.inversion_steps, lr=cfg.inversion_lr,
                          l2_lambda=cfg.inversion_l2_lambda, lpips_lambda=cfg.inversion_lpips_lambda)


def _build_prototypes(cfg: TrainConfig, domain: Domain, generator, shots: Shots, workdir: Path,
                      overwrite_inversion: bool, lpips_weights, log):
    key = jax.random.key(cfg.seed)
    key_inv, key_proto = jax.random.split(jax.random.fold_in(key, 1))
    c = generator.config
    # The inversion cache is the writer's: it alone reads, computes and writes it, and hands the codes to the other
    # processes (which wait), so every process builds the same prototypes from the same codes.
    w_plus = np.zeros((len(shots.names), c.n_latent, c.style_dim), np.float32)
    loss = np.zeros((len(shots.names),), np.float32)
    shot_codes = None
    if hosts.is_writer():
        lpips_params = load_lpips(lpips_weights).params if cfg.inversion_lpips_lambda else None
        bar = Progress(total=cfg.inversion_steps, desc=f"invert {len(shots.names)} shots", unit="step")

        def on_chunk(done, losses, best):
            bar.postfix = ("loss best " + " ".join(f"{v:.3f}" for v in best) + " | now "
                           + " ".join(f"{v:.3f}" for v in losses))
            bar.update(done - bar.n)

        inv = invert_cached(workdir / "inversion", shots.names, generator, lpips_params, shots.images, key_inv,
                            overwrite=overwrite_inversion, log=log, steps=cfg.inversion_steps, lr=cfg.inversion_lr,
                            l2_lambda=cfg.inversion_l2_lambda, lpips_lambda=cfg.inversion_lpips_lambda,
                            on_chunk=on_chunk)
        bar.close()
        w_plus, loss = np.asarray(inv.w_plus, np.float32), np.asarray(inv.loss, np.float32)
        shot_codes = ShotCodes(shots.names, w_plus, loss, inv.history)  # the writer's, for the export
    w_plus, loss = hosts.from_writer((w_plus, loss))
    log("inversion loss per shot: " + ", ".join(f"{n}={v:.4f}" for n, v in zip(shots.names, loss)))
    # The original builds prototypes from one random noise draw (coach.py:124-126); ours is seeded.
    onehot = data.onehot(shots.labels, domain.n_classes)
    protos = labelers.build(cfg.labeler, generator, w_plus, key_proto, onehot, mode=domain.mode, images=shots.images)
    if domain.mode == "dense":
        step = onehot.shape[1] // stylegan2.FEATURE_RES  # the labellers' torch-nearest (top-left) reduction to 64x64
        absent = [c for c in range(domain.n_classes) if not onehot[:, ::step, ::step, c].any()]
        if absent:
            log(f"classes absent from every shot at 64x64 (never predicted): {absent}")
    log(labelers.describe(protos))
    return protos, shot_codes


def _save_preview(preview_fn, state, gen_params, protos, latent_avg, cfg: TrainConfig, step: int, workdir: Path,
                  events: tblog.EventLog | None = None):
    key = jax.random.fold_in(jax.random.key(cfg.seed), 10_000_019 + step)
    pv = preview_fn(state, gen_params, protos, latent_avg, key)  # every process: the mesh computes it together
    if hosts.is_writer():
        rows = [[viz.colorize(lab), viz.to_uint8(s), viz.to_uint8(r)]
                for lab, s, r in zip(pv.labels, pv.sample, pv.reconstruction)]
        legend = viz.class_legend(cfg.domain_preset.n_classes, cfg.domain_preset.class_names)
        grid = viz.titled_grid(rows, ("pseudo-label", "sample", "reconstruction"), legend=legend)
        viz.save_png(workdir / "images" / f"step_{step:07d}.png", grid)
        if events is not None:
            events.image("preview", step, grid)
