"""torchvision AlexNet + LPIPS v0.1 lin weights -> the Flax tree of ``smis_jax.lpips.LPIPS``.

| PyTorch key                          | shape              | Flax leaf (under ``params``)   | transform          |
|--------------------------------------|--------------------|--------------------------------|--------------------|
| AlexNet ``features.{j}.weight``      | (O, I, k, k)       | ``conv{i}/kernel`` (k, k, I, O)| ``(2, 3, 1, 0)``   |
| AlexNet ``features.{j}.bias``        | (O,)               | ``conv{i}/bias``               | as is              |
| lin ``lin{i}.model.1.weight``        | (1, C, 1, 1)       | ``lin{i}/kernel`` (1, 1, C, 1) | ``(2, 3, 1, 0)``   |

``j`` = 0, 3, 6, 8, 10 for ``i`` = 0..4 (torchvision's ``features`` indices of the five convs). The AlexNet file's
``classifier.*`` keys are ignored on purpose (LPIPS only uses ``features``); every other key must be used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from smis_jax import torchfile
from smis_jax.conversion.common import ConversionError, StateDict, check_tree, save_converted
from smis_jax.lpips import ALEXNET_CONVS, IN_CHANNELS, param_shapes

__all__ = ["params_from_state_dicts", "convert"]

_OIHW_TO_HWIO = (2, 3, 1, 0)


def params_from_state_dicts(alexnet: StateDict, lin: StateDict) -> dict[str, Any]:
    """Consume both state dicts completely (strict) and return the variables ``{'params': ...}``."""
    params = {}
    alexnet.ignore([k for k in alexnet.keys() if k.startswith("classifier.")])
    for i, (j, out_ch, k, _, _) in enumerate(ALEXNET_CONVS):
        weight = alexnet.take(f"features.{j}.weight", (out_ch, IN_CHANNELS[i], k, k))
        params[f"conv{i}"] = {
            "kernel": np.ascontiguousarray(weight.transpose(_OIHW_TO_HWIO), np.float32),
            "bias": np.asarray(alexnet.take(f"features.{j}.bias", (out_ch,)), np.float32),
        }
        w_lin = lin.take(f"lin{i}.model.1.weight", (1, out_ch, 1, 1))
        params[f"lin{i}"] = {"kernel": np.ascontiguousarray(w_lin.transpose(_OIHW_TO_HWIO), np.float32)}
    alexnet.finish()
    lin.finish()
    variables = {"params": params}
    check_tree(param_shapes(), variables, "lpips")
    return variables


def _state_dict(path: str | os.PathLike, what: str) -> StateDict:
    obj = torchfile.load(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError(f"{path}: expected a {what} state dict (a flat mapping of tensors)")
    return StateDict(obj, str(path))


def convert(alexnet_path: str | os.PathLike, lin_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` (config.json ``{'kind': 'lpips', 'net': 'alex'}`` + the ``params`` tree); returns its path.

    ``alexnet_path``: torchvision's AlexNet state dict (e.g. ``alexnet-owt-7be5be79.pth``); ``lin_path``: LPIPS
    v0.1 ``alex.pth``. Raises ConversionError / TorchFileError naming the first bad key with both shapes.
    """
    variables = params_from_state_dicts(_state_dict(alexnet_path, "torchvision AlexNet"),
                                        _state_dict(lin_path, "LPIPS lin"))
    return save_converted(out_dir, {"kind": "lpips", "net": "alex"}, params=variables)
