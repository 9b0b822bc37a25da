"""rosinality ``stylegan2-pytorch`` generator state dict -> Flax tree of ``smis_jax.nets.stylegan2.Generator``.

The table (PyTorch key -> Flax leaf under ``params``, transform); O out, I in, D style_dim, k kernel size:

| PyTorch key (under ``prefix``)          | shape           | Flax leaf                             | transform     |
|-----------------------------------------|-----------------|---------------------------------------|---------------|
| ``style.{i}.weight`` / ``.bias``, i>=1  | (D, D) / (D,)   | ``style/dense_{i-1}/kernel``/``bias`` | ``.T`` / as is|
| ``input.input``                         | (1, C4, 4, 4)   | ``input`` (1, 4, 4, C4)               | NCHW -> NHWC  |
| ``<conv>.conv.weight``                  | (1, O, I, k, k) | ``<conv>/conv/weight`` (k, k, I, O)   | [0] -> HWIO   |
| ``<conv>.conv.modulation.weight/bias``  | (I, D) / (I,)   | ``<conv>/conv/modulation/kernel/bias``| ``.T`` / as is|
| ``<conv>.noise.weight``                 | (1,)            | ``<conv>/noise_weight``               | as is         |
| ``<conv>.activate.bias``                | (O,)            | ``<conv>/activate_bias``              | as is         |
| ``<rgb>.bias``                          | (1, 3, 1, 1)    | ``<rgb>/bias`` (3,)                   | reshape       |
| ``convs.{2k}.conv.blur.kernel``         | (4, 4)          | ``convs_{2k}/conv/blur_kernel``       | as is         |
| ``to_rgbs.{k}.upsample.kernel``         | (4, 4)          | ``to_rgbs_{k}/upsample_kernel``       | as is         |
| ``noises.noise_{i}``                    | (1, 1, r, r)    | ``noises[i]`` (1, r, r, 1)            | NCHW -> NHWC  |

``<conv>`` is ``conv1`` or ``convs.{j}`` (Flax ``convs_{j}``; even j upsample), ``<rgb>`` is ``to_rgb1`` or
``to_rgbs.{k}`` (Flax ``to_rgbs_{k}``). Stored values are kept raw (the modulation bias includes rosinality's
``+1`` init); equalised-lr scales are applied at run time. The FIR buffers are kept and used as stored, as
``load_state_dict`` makes the original do: trained checkpoints hold ``outer([1,3,3,1])/64*4`` there, but a
checkpoint may hold anything (the golden test file randomises them) and recomputing would change its output.
The architecture (size, style_dim, n_mlp, channel table) is inferred from the key set and shapes, then every
key is taken with its expected shape.

NVIDIA's pickles (stylegan2-ada-pytorch snapshots, TensorFlow StyleGAN2 ``(G, D, Gs)``) are first mapped onto
this table's keys by ``conversion/nvidia.py``; :func:`read_checkpoint` tells the formats apart by content.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

from smis_jax.errors import ConfigError, OutputExistsError
from smis_jax.io import nvidia, nvidiafile, torchfile
from smis_jax.io.converted import ConversionError, StateDict, check_tree, is_converted, load_converted, save_converted
from smis_jax.nets.ops import make_kernel
from smis_jax.nets.stylegan2 import GeneratorConfig, LoadedGenerator, param_shapes

__all__ = ["load", "generator_from_state_dict", "read_rosinality", "read_nvidia", "read_checkpoint", "convert",
           "noises_from_tree", "state_dict_from_params", "write_rosinality", "discriminator_from_state_dict"]

def _count(sd: StateDict, fmt: str, start: int) -> int:
    n = 0
    while fmt.format(start + n) in sd:
        n += 1
    return n


def _dim(sd: StateDict, key: str, ndim: int, axis: int) -> int:
    shape = sd.shape(key)
    if len(shape) != ndim:
        raise ConversionError(f"{sd.source}: key '{key}' has shape {shape}, expected a {ndim}-D array")
    return shape[axis]


def infer_config(sd: StateDict, prefix: str = "", conv_clamp: float | None = None,
                 lr_mlp: float = 0.01) -> GeneratorConfig:
    """Architecture from the key set and shapes (n_mlp from ``style.*``, size from ``to_rgbs.*``, channels
    from ``input.input`` and the up-convs' output widths, style_dim from the mapping); ``conv_clamp`` and
    ``lr_mlp`` are not in a state dict and come from the caller."""
    n_mlp = _count(sd, prefix + "style.{}.weight", 1)
    if n_mlp == 0:
        raise ConversionError(
            f"{sd.source}: missing key '{prefix}style.1.weight'; not a rosinality StyleGAN2 generator state dict"
        )
    style_dim = _dim(sd, prefix + "style.1.weight", 2, 0)
    n_blocks = _count(sd, prefix + "to_rgbs.{}.conv.weight", 0)
    size = 2 ** (n_blocks + 2)
    if size < 64:
        raise ConversionError(
            f"{sd.source}: found {n_blocks} '{prefix}to_rgbs.*' blocks (size {size}); "
            f"a generator of size >= 64 is needed"
        )
    channels = {4: _dim(sd, prefix + "input.input", 4, 1)}
    for k in range(n_blocks):
        channels[2 ** (k + 3)] = _dim(sd, f"{prefix}convs.{2 * k}.conv.weight", 5, 1)
    try:
        return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels, lr_mlp=lr_mlp,
                               conv_clamp=conv_clamp)
    except ConfigError as e:
        raise ConversionError(f"{sd.source}: {e}") from None


def generator_from_state_dict(sd: StateDict, prefix: str = "", conv_clamp: float | None = None,
                              lr_mlp: float = 0.01) -> tuple[GeneratorConfig, dict, list[np.ndarray]]:
    """Consume a rosinality generator's keys under ``prefix`` (e.g. ``"decoder."`` in pSp files).

    Returns ``(config, {'params': tree}, noises)`` with noises a list of (1, r, r, 1) float32 arrays.
    Does not call ``sd.finish()``: the caller decides whether other keys may remain.
    """
    config = infer_config(sd, prefix, conv_clamp, lr_mlp)
    d = config.style_dim

    def take(key, shape):
        return np.asarray(sd.take(prefix + key, shape), dtype=np.float32)

    def modconv(name, i, o, k, upsample=False):
        out = {
            "weight": rearrange(take(f"{name}.weight", (1, o, i, k, k)), "1 o i kh kw -> kh kw i o"),
            "modulation": {"kernel": take(f"{name}.modulation.weight", (i, d)).T,  # (D, I)
                           "bias": take(f"{name}.modulation.bias", (i,))},
        }
        if upsample:
            out["blur_kernel"] = take(f"{name}.blur.kernel", (4, 4))
        return out

    def styled_conv(name, i, o, upsample):
        out = {"conv": modconv(f"{name}.conv", i, o, 3, upsample)}
        out["noise_weight"] = take(f"{name}.noise.weight", (1,))
        out["activate_bias"] = take(f"{name}.activate.bias", (o,))
        return out

    def to_rgb(name, i, upsample):
        out = {"bias": take(f"{name}.bias", (1, 3, 1, 1)).reshape(3)}
        if upsample:
            out["upsample_kernel"] = take(f"{name}.upsample.kernel", (4, 4))
        out["conv"] = modconv(f"{name}.conv", i, 3, 1)
        return out

    tree: dict[str, Any] = {
        "style": {f"dense_{i}": {"kernel": take(f"style.{i + 1}.weight", (d, d)).T,
                                 "bias": take(f"style.{i + 1}.bias", (d,))} for i in range(config.n_mlp)},
    }
    c4 = config.channel(4)
    tree["input"] = rearrange(take("input.input", (1, c4, 4, 4)), "n c h w -> n h w c")
    tree["conv1"] = styled_conv("conv1", c4, c4, False)
    tree["to_rgb1"] = to_rgb("to_rgb1", c4, False)
    in_ch = c4
    for k, res in enumerate(config.resolutions[1:]):
        out_ch = config.channel(res)
        tree[f"convs_{2 * k}"] = styled_conv(f"convs.{2 * k}", in_ch, out_ch, True)
        tree[f"convs_{2 * k + 1}"] = styled_conv(f"convs.{2 * k + 1}", out_ch, out_ch, False)
        tree[f"to_rgbs_{k}"] = to_rgb(f"to_rgbs.{k}", out_ch, True)
        in_ch = out_ch
    noises = []
    for i in range(config.num_layers):
        r = 2 ** ((i + 5) // 2)
        noises.append(rearrange(take(f"noises.noise_{i}", (1, 1, r, r)), "n c h w -> n h w c"))
    params = {"params": tree}
    # Our table against the module's own parameter tree: a mismatch here is a bug in this file, not the input.
    check_tree(param_shapes(config), params, "stylegan2 conversion table")
    return config, params, noises


def read_rosinality(path: str | os.PathLike) -> tuple[GeneratorConfig, dict, list[np.ndarray], np.ndarray | None]:
    """Read a rosinality ``.pt`` (``{'g_ema': state_dict, 'latent_avg'?: (D,), ...}``) without running pickled code.

    Uses ``g_ema`` only (``g``, ``d``, ``args``, optimiser states are ignored). Returns
    ``(config, params, noises, latent_avg or None)``.
    """
    path = os.fspath(path)
    ckpt = torchfile.load(path)
    if not isinstance(ckpt, dict):
        raise ConversionError(
            f"{path}: top level is a {type(ckpt).__name__}, expected a dict with 'g_ema' (a rosinality checkpoint)"
        )
    if "g_ema" not in ckpt:
        if "g" in ckpt:
            raise ConversionError(
                f"{path}: has 'g' but no 'g_ema'; the EMA generator 'g_ema' is required ('g' is never used)"
            )
        if any(isinstance(k, str) and k.startswith("style.") for k in ckpt):
            raise ConversionError(
                f"{path}: a bare generator state dict; expected {{'g_ema': state_dict, 'latent_avg': ...}} "
                f"as rosinality saves it"
            )
        keys = ", ".join(repr(k) for k in list(ckpt)[:6])
        raise ConversionError(f"{path}: no 'g_ema' entry (top-level keys: {keys}); not a rosinality checkpoint")
    g_ema = ckpt["g_ema"]
    if not isinstance(g_ema, dict):
        raise ConversionError(f"{path}: 'g_ema' is a {type(g_ema).__name__}, expected a state dict")
    for key, value in g_ema.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(f"{path}: g_ema entry '{key}' is a {type(value).__name__}, expected a tensor")
    sd = StateDict(g_ema, source=f"{path} [g_ema]")
    config, params, noises = generator_from_state_dict(sd)
    sd.finish()
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, np.ndarray) or latent_avg.shape != (config.style_dim,):
            shape = latent_avg.shape if isinstance(latent_avg, np.ndarray) else type(latent_avg).__name__
            raise ConversionError(f"{path}: 'latent_avg' has shape {shape}, expected ({config.style_dim},)")
        latent_avg = latent_avg.astype(np.float32)
    return config, params, noises, latent_avg


def read_nvidia(path: str | os.PathLike) -> tuple[GeneratorConfig, dict, list[np.ndarray], np.ndarray | None]:
    """Read a stylegan2-ada-pytorch network pickle (``G_ema``, ``mapping.w_avg`` as latent_avg) or a TensorFlow
    StyleGAN2 pickle (``Gs``, ``dlatent_avg``) without running pickled code. Returns like :func:`read_rosinality`."""
    state_dict, extras = nvidia.read_pickle(path)
    sd = StateDict(state_dict, source=f"{os.fspath(path)} [as rosinality keys]")
    config, params, noises = generator_from_state_dict(sd, conv_clamp=extras.conv_clamp, lr_mlp=extras.lr_mlp)
    sd.finish()
    return config, params, noises, extras.latent_avg


def read_checkpoint(path: str | os.PathLike) -> tuple[GeneratorConfig, dict, list[np.ndarray], np.ndarray | None]:
    """A rosinality ``.pt`` or an NVIDIA ``.pkl``, told apart by content (a ``torch.save`` zip or legacy stream,
    or a plain pickle), not by the file name."""
    if os.path.isfile(path) and not zipfile.is_zipfile(path) and nvidiafile.is_pickle(path):
        return read_nvidia(path)
    return read_rosinality(path)


def noises_from_tree(tree: Any) -> list[np.ndarray]:
    """The stored noise list as restored by orbax (a list, or a dict keyed '0', '1', ...)."""
    if isinstance(tree, dict):
        return [tree[k] for k in sorted(tree, key=int)]
    return list(tree)


def convert(in_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """``python -m convert stylegan2 IN OUT`` (IN: rosinality ``.pt`` or NVIDIA ``.pkl``): write config.json (kind
    'stylegan2') + params / noises / latent_avg trees. Fails (ConversionError, TorchFileError, NvidiaPickleError,
    FileExistsError) before writing anything."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out.absolute()} exists and is not empty; choose a new output directory")
    config, params, noises, latent_avg = read_checkpoint(in_path)
    trees = {"params": params, "noises": noises}
    if latent_avg is not None:
        trees["latent_avg"] = latent_avg
    meta = {"kind": "stylegan2", **config.to_json(), "has_latent_avg": latent_avg is not None}
    return save_converted(out, meta, **trees)


def state_dict_from_params(config: GeneratorConfig, params: Any, noises) -> dict[str, np.ndarray]:
    """The inverse of :func:`generator_from_state_dict`: a rosinality ``Generator`` state dict (numpy arrays,
    PyTorch layouts) from our ``{'params': ...}`` tree and (1, r, r, 1) noise buffers."""
    if getattr(config, "conv_clamp", None) is not None:
        raise ConversionError(f"rosinality's generator has no conv_clamp; this one clamps at {config.conv_clamp}")
    check_tree(param_shapes(config), params, "stylegan2 params")
    tree = params["params"]
    sd: dict[str, np.ndarray] = {}

    def put(key, value):
        sd[key] = np.ascontiguousarray(np.asarray(value, np.float32))

    def modconv(name, leaf):
        put(f"{name}.weight", rearrange(np.asarray(leaf["weight"]), "kh kw i o -> 1 o i kh kw"))
        put(f"{name}.modulation.weight", np.asarray(leaf["modulation"]["kernel"]).T)
        put(f"{name}.modulation.bias", leaf["modulation"]["bias"])
        if "blur_kernel" in leaf:
            put(f"{name}.blur.kernel", leaf["blur_kernel"])

    def styled_conv(name, leaf):
        modconv(f"{name}.conv", leaf["conv"])
        put(f"{name}.noise.weight", leaf["noise_weight"])
        put(f"{name}.activate.bias", leaf["activate_bias"])

    def to_rgb(name, leaf):
        put(f"{name}.bias", np.asarray(leaf["bias"]).reshape(1, 3, 1, 1))
        if "upsample_kernel" in leaf:
            put(f"{name}.upsample.kernel", leaf["upsample_kernel"])
        modconv(f"{name}.conv", leaf["conv"])

    for i in range(config.n_mlp):
        put(f"style.{i + 1}.weight", np.asarray(tree["style"][f"dense_{i}"]["kernel"]).T)
        put(f"style.{i + 1}.bias", tree["style"][f"dense_{i}"]["bias"])
    put("input.input", rearrange(np.asarray(tree["input"]), "n h w c -> n c h w"))
    styled_conv("conv1", tree["conv1"])
    to_rgb("to_rgb1", tree["to_rgb1"])
    for k in range(len(config.resolutions) - 1):
        styled_conv(f"convs.{2 * k}", tree[f"convs_{2 * k}"])
        styled_conv(f"convs.{2 * k + 1}", tree[f"convs_{2 * k + 1}"])
        to_rgb(f"to_rgbs.{k}", tree[f"to_rgbs_{k}"])
    if len(noises) != config.num_layers:
        raise ValueError(f"expected {config.num_layers} noise buffers, got {len(noises)}")
    for i, n in enumerate(noises):
        put(f"noises.noise_{i}", rearrange(np.asarray(n), "n h w c -> n c h w"))
    return sd


def write_rosinality(path: str | os.PathLike, config: GeneratorConfig, params: Any, noises,
                     latent_avg=None) -> Path:
    """Save ``{'g_ema': state_dict[, 'latent_avg']}`` as rosinality's ``train.py`` does, for the PyTorch original.

    Writing a file PyTorch loads needs torch (``pip install torch``); reading never does.
    """
    try:
        import torch
    except ImportError:
        raise ConversionError("writing a rosinality .pt needs torch (pip install torch); the converted folder "
                              "needs nothing") from None
    from collections import OrderedDict

    sd = state_dict_from_params(config, params, noises)
    ckpt: dict[str, Any] = {"g_ema": OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())}
    if latent_avg is not None:
        ckpt["latent_avg"] = torch.from_numpy(np.asarray(latent_avg, np.float32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def discriminator_from_state_dict(sd: StateDict, prefix: str = "") -> tuple[tuple, dict]:
    """rosinality ``Discriminator`` keys (``d`` in a training checkpoint) -> ``(channels, {'params': tree})`` of
    :class:`smis_jax.gan.Discriminator` (to fine-tune from a rosinality run, and the discriminator's parity test).

    | PyTorch key                                | Flax leaf                                  | transform        |
    |--------------------------------------------|--------------------------------------------|------------------|
    | ``convs.0.0.weight`` / ``convs.0.1.bias``  | ``convs_0/weight`` / ``bias``              | OIHW -> HWIO     |
    | ``convs.{i}.conv1.0.weight`` / ``.1.bias`` | ``convs_{i}/conv1/weight`` / ``bias``      | OIHW -> HWIO     |
    | ``convs.{i}.conv2.1.weight`` / ``.2.bias`` | ``convs_{i}/conv2/weight`` / ``bias``      | OIHW -> HWIO     |
    | ``convs.{i}.skip.1.weight``                | ``convs_{i}/skip/weight``                  | OIHW -> HWIO     |
    | ``final_conv.0.weight`` / ``.1.bias``      | ``final_conv/weight`` / ``bias``           | OIHW -> HWIO     |
    | ``final_linear.0.weight`` (O, C*4*4)       | ``final_linear_0/kernel`` (4*4*C, O)       | CHW rows -> HWC  |
    | ``final_linear.{0,1}.bias``, ``.1.weight`` | ``final_linear_{0,1}/bias``, ``_1/kernel`` | as is / ``.T``   |

    The blur buffers (``*.0.kernel``) must hold rosinality's fixed ``[1,3,3,1]`` kernel, which ours applies.
    """
    def take(key, shape=None):
        return np.asarray(sd.take(prefix + key, shape), np.float32)

    def conv(key):
        return rearrange(take(key), "o i kh kw -> kh kw i o")

    n = _count(sd, prefix + "convs.{}.conv1.0.weight", 1)
    if prefix + "convs.0.0.weight" not in sd or n == 0:
        raise ConversionError(f"{sd.source}: missing key '{prefix}convs.0.0.weight'; not a rosinality discriminator")
    size = 2 ** (n + 2)
    channels = {size: sd.shape(prefix + "convs.0.0.weight")[0]}
    tree: dict[str, Any] = {"convs_0": {"weight": conv("convs.0.0.weight"), "bias": take("convs.0.1.bias")}}
    for i in range(1, n + 1):
        for name in ("conv2", "skip"):
            kernel = take(f"convs.{i}.{name}.0.kernel", (4, 4))
            if not np.allclose(kernel, make_kernel(), atol=1e-7):
                raise ConversionError(f"{sd.source}: '{prefix}convs.{i}.{name}.0.kernel' is not the [1,3,3,1] blur")
        tree[f"convs_{i}"] = {
            "conv1": {"weight": conv(f"convs.{i}.conv1.0.weight"), "bias": take(f"convs.{i}.conv1.1.bias")},
            "conv2": {"weight": conv(f"convs.{i}.conv2.1.weight"), "bias": take(f"convs.{i}.conv2.2.bias")},
            "skip": {"weight": conv(f"convs.{i}.skip.1.weight")},
        }
        channels[size >> i] = tree[f"convs_{i}"]["conv2"]["weight"].shape[-1]
    c4 = channels[4]
    tree["final_conv"] = {"weight": conv("final_conv.0.weight"), "bias": take("final_conv.1.bias")}
    w0 = take("final_linear.0.weight", (c4, c4 * 16))  # torch flattens NCHW features, we flatten NHWC ones
    tree["final_linear_0"] = {"kernel": rearrange(w0, "o (c h w) -> (h w c) o", c=c4, h=4, w=4),
                              "bias": take("final_linear.0.bias", (c4,))}
    tree["final_linear_1"] = {"kernel": take("final_linear.1.weight", (1, c4)).T, "bias": take("final_linear.1.bias")}
    return tuple(sorted(channels.items())), {"params": tree}


def load(path: str | Path) -> LoadedGenerator:
    """Load a directory written by ``python -m convert stylegan2``, or convert in memory a rosinality ``.pt``, a
    stylegan2-ada-pytorch network pickle or an original TensorFlow StyleGAN2 pickle (told apart by content).

    Raises ConversionError / TorchFileError / NvidiaPickleError (ValueError subclasses) with a one-line reason.
    """
    path = Path(path)
    if path.is_dir():
        if not is_converted(path):
            raise ConversionError(f"{path}: not a converted checkpoint (no config.json)")
        meta = json.loads((path / "config.json").read_text())
        names = ["params", "noises"] + (["latent_avg"] if meta.get("has_latent_avg") else [])
        cfg, trees = load_converted(path, "stylegan2", names)
        try:
            config = GeneratorConfig.from_json(cfg)
        except ConfigError as e:
            raise ConversionError(f"{path}/config.json: {e}") from None
        noises = noises_from_tree(trees["noises"])
        return LoadedGenerator(config, trees["params"], noises, trees.get("latent_avg"))
    config, params, noises, latent_avg = read_checkpoint(path)
    return LoadedGenerator(config, params, noises, latent_avg)
