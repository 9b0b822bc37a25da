"""Strict state-dict consumption and the converted-checkpoint directory format.

A converted checkpoint is a directory::

    OUT/config.json      {"kind": "stylegan2" | "psp" | "lpips", "format_version": 1, ...architecture...}
    OUT/<tree>/          one orbax checkpoint per tree (e.g. "params", "noises", "batch_stats")

Every converter consumes its PyTorch state dict through :class:`StateDict`, which names the first missing,
mis-shaped or unused key, so no weight is silently dropped or invented.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from smis_jax import hosts
from smis_jax.errors import ConversionError, OutputExistsError
from smis_jax.nets.trees import check_tree, flatten as _flatten  # check_tree: re-exported

FORMAT_VERSION = 1



class StateDict:
    """A flat ``{key: array}`` mapping that must be consumed completely.

    ``take(key, shape)`` returns the array after checking its shape; ``ignore(keys)`` marks keys as
    deliberately unused (buffers recomputed on our side); ``finish()`` fails on anything left over.
    """

    def __init__(self, state: Mapping[str, Any], source: str = "checkpoint"):
        self._state = {k: np.asarray(v) for k, v in state.items()}
        self._used: set[str] = set()
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self._state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._state:
            raise ConversionError(f"{self.source}: missing key '{key}'")
        return tuple(self._state[key].shape)

    def take(self, key: str, shape: Iterable[int] | None = None) -> np.ndarray:
        if key not in self._state:
            expected = f" (expected shape {tuple(shape)})" if shape is not None else ""
            raise ConversionError(f"{self.source}: missing key '{key}'{expected}")
        value = self._state[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ConversionError(
                f"{self.source}: key '{key}' has shape {tuple(value.shape)}, expected {tuple(shape)}"
            )
        self._used.add(key)
        return value

    def ignore(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key in self._state:
                self._used.add(key)

    def finish(self) -> None:
        unused = [k for k in self._state if k not in self._used]
        if unused:
            more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
            raise ConversionError(
                f"{self.source}: unexpected key '{unused[0]}' with shape {tuple(self._state[unused[0]].shape)}{more}"
            )








def save_converted(out_dir: str | os.PathLike, config: Mapping[str, Any], **trees: Any) -> Path:
    """Write ``config.json`` and one orbax checkpoint per tree into ``out_dir`` (which must not exist or be empty)."""
    if "kind" not in config:
        raise ValueError("config needs a 'kind'")
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not empty; choose a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    with hosts.local_checkpointer() as ckptr:
        for name, tree in trees.items():
            ckptr.save(out / name, jax.tree.map(np.asarray, tree))
    (out / "config.json").write_text(json.dumps({**config, "format_version": FORMAT_VERSION}, indent=1))
    return out


def is_converted(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def load_converted(path: str | os.PathLike, kind: str, trees: Iterable[str]) -> tuple[dict, dict[str, Any]]:
    """Read a directory written by :func:`save_converted`; returns ``(config, {tree_name: numpy tree})``."""
    root = Path(path).absolute()
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{root}: not a converted checkpoint (no config.json)")
    config = json.loads(cfg_file.read_text())
    if config.get("kind") != kind:
        raise ConversionError(f"{root}: holds a '{config.get('kind')}' checkpoint, expected '{kind}'")
    out = {}
    with hosts.local_checkpointer() as ckptr:
        for name in trees:
            if not (root / name).is_dir():
                raise ConversionError(f"{root}: missing tree '{name}'")
            try:
                out[name] = ckptr.restore(root / name)
            except Exception as e:  # noqa: BLE001 - orbax raises many kinds for missing or truncated files
                text = " ".join(str(e).split())
                raise ConversionError(
                    f"{root / name}: tree '{name}' cannot be read, files in it are missing or damaged "
                    f"({type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}); write it again "
                    f"(a run's export/ by training, a converted folder with python -m convert)") from None
    return config, out
