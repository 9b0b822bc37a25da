"""A run's export: everything synthesis and evaluation need, in one folder that can be copied to another machine.

    export/
      config.json          kind 'psp': the encoder and generator architectures, pSp's ``opts``, and ``run``: the
                           training configuration, domain, class names, shot names, step and where the data came from
      params, batch_stats  the encoder
      generator_params, generator_noises, latent_avg
                           the generator the encoder was trained for (its fixed noise, the W+ centre)
      prototypes           the run's pseudo-labeller (smis_jax.labelers: the shots' class prototypes for 'paper')
      shots                the shots' inverted W+ codes, final losses and loss curves (inversion quality)

``python -m smis_jax.synthesize --checkpoint`` and the editor read the first three rows (any pSp checkpoint has
them); ``python -m smis_jax.evaluate --checkpoint`` needs ``prototypes`` too, which only exports written by
``train.run`` hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from smis_jax import labelers
from smis_jax.io import load_pipeline
from smis_jax.io.converted import ConversionError, load_converted, save_converted
from smis_jax.nets import psp

__all__ = ["write", "load", "RunExport", "ShotCodes"]


@dataclass(frozen=True)
class ShotCodes:
    names: tuple[str, ...]
    w_plus: np.ndarray  # (K, S, D) inverted codes
    loss: np.ndarray  # (K,) final inversion loss
    history: np.ndarray | None  # (steps, K) loss per step, when known


@dataclass(frozen=True)
class RunExport:
    pipeline: psp.Pipeline  # encoder + generator + latent_avg
    prototypes: labelers.Labeler  # the run's pseudo-labeller (an export with prototypes only: 'paper')
    run: dict[str, Any]  # config.json's 'run': train (TrainConfig dict), domain, class_names, shots, step, data
    shots: ShotCodes | None
    path: Path


def write(out_dir: str | Path, enc_config: psp.EncoderConfig, state, generator, latent_avg_SD,
          opts: Mapping[str, Any], run: Mapping[str, Any] | None = None, prototypes=None,
          shots: ShotCodes | None = None) -> Path:
    """Write an export (see the module docstring). ``state``: anything with ``params`` and ``batch_stats``
    (a TrainState). ``run``/``prototypes``/``shots`` are what a training run adds to a synthesis checkpoint."""
    config = {"kind": "psp", "encoder": enc_config.to_json(), "generator": generator.config.to_json(),
              "opts": dict(opts), "label_nc": enc_config.input_nc, "source": "smis-jax training"}
    trees = dict(params=jax.device_get(state.params), batch_stats=jax.device_get(state.batch_stats),
                 generator_params=generator.params, generator_noises=generator.noises,
                 latent_avg=np.asarray(latent_avg_SD))
    if run is not None:
        config["run"] = dict(run)
    if prototypes is not None:
        trees["prototypes"] = labelers.to_state(prototypes)
    if shots is not None:
        config.setdefault("run", {})["shot_names"] = list(shots.names)
        trees["shots"] = {"w_plus": np.asarray(shots.w_plus, np.float32), "loss": np.asarray(shots.loss, np.float32),
                          # orbax cannot store an empty array: no curve when the shots were not inverted (0 steps)
                          **({} if shots.history is None or np.size(shots.history) == 0
                             else {"history": np.asarray(shots.history, np.float32)})}
    return save_converted(out_dir, config, **trees)


def load(path: str | Path) -> RunExport:
    """Read an export written by ``train.run``; a clear error names what is missing (e.g. an older export, or a
    converted pSp checkpoint, which has no prototypes)."""
    path = Path(path)
    pipeline = load_pipeline(path)
    config = pipeline.config
    run = config.get("run")
    if not isinstance(run, dict) or not (path / "prototypes").is_dir():
        raise ConversionError(
            f"{path}: holds an encoder and a generator but no training run record and prototypes (a converted pSp "
            f"checkpoint, or an export written before smis-jax stored them); evaluate the run folder with "
            f"--workdir, or finish the run again with train.run --resume to rewrite its export")
    trees = ["prototypes"] + (["shots"] if (path / "shots").is_dir() else [])
    _, loaded = load_converted(path, "psp", trees)
    try:
        prototypes = labelers.from_state(loaded["prototypes"])
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{path / 'prototypes'}: not a prototype tree ({e})") from None
    shots = None
    if "shots" in loaded:
        s = loaded["shots"]
        shots = ShotCodes(tuple(run.get("shot_names", ())), np.asarray(s["w_plus"]), np.asarray(s["loss"]),
                          np.asarray(s["history"]) if "history" in s else None)
    return RunExport(pipeline, prototypes, run, shots, path)
