"""pSp / Fewshot-SMIS checkpoints (``{'state_dict', 'latent_avg', 'opts'}``) -> smis-jax encoder + generator.

The encoder table maps every Flax leaf of :class:`smis_jax.nets.psp.GradualStyleEncoder` to one PyTorch key
(CONVERSION.md 3.2); the architecture (input_nc, stage widths and units, style_num, style_dim, SE reduction) is
inferred from the keys and shapes. The decoder goes through the StyleGAN2 table (prefix ``decoder.``). Every key
of the state dict must be consumed; ``num_batches_tracked`` is deliberately ignored (PyTorch only uses it when
BatchNorm momentum is None, which pSp never sets).

Stage boundaries are visible in the keys only where the width changes (a ``shortcut_layer`` conv); two adjacent
stages of equal width (e.g. the tiny golden config 16,32,32,64) cannot be told apart, so ``units`` must then be
given explicitly. The real IR-SE-50/100/152 (64,128,256,512) are always inferred.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from smis_jax.errors import ConfigError, MissingFileError
from smis_jax.io import torchfile
from smis_jax.io.converted import ConversionError, StateDict, check_tree, is_converted, load_converted, save_converted
from smis_jax.io.stylegan2 import generator_from_state_dict, noises_from_tree
from smis_jax.nets.psp import EncoderConfig, LoadedEncoder, Pipeline, abstract_variables
from smis_jax.nets.stylegan2 import GeneratorConfig, LoadedGenerator

__all__ = [
    "load",
    "load_pipeline",
    "encoder_key_table",
    "infer_encoder_config",
    "encoder_from_state_dict",
    "convert_checkpoint",
    "convert",
]

# (torch suffix, flax leaf, collection) for one BatchNorm2d.
_BN = (("weight", "scale", "params"), ("bias", "bias", "params"),
       ("running_mean", "mean", "batch_stats"), ("running_var", "var", "batch_stats"))


def encoder_key_table(cfg, prefix: str = "encoder.") -> list[tuple[str, tuple[str, ...], str, str]]:
    """``[(collection, flax_path, torch_key, transform), ...]`` covering every encoder leaf once.

    transform: ``'conv'`` OIHW -> HWIO, ``'linear'`` (out, in) -> (in, out), ``'id'``.
    """
    rows: list[tuple[str, tuple[str, ...], str, str]] = []

    def conv(path, key, bias=False):
        rows.append(("params", (*path, "kernel"), f"{prefix}{key}.weight", "conv"))
        if bias:
            rows.append(("params", (*path, "bias"), f"{prefix}{key}.bias", "id"))

    def bn(path, key):
        for t, f, coll in _BN:
            rows.append((coll, (*path, f), f"{prefix}{key}.{t}", "id"))

    def prelu(path, key):
        rows.append(("params", (*path, "alpha"), f"{prefix}{key}.weight", "id"))

    conv(("input_conv",), "input_layer.0")
    bn(("input_bn",), "input_layer.1")
    prelu(("input_prelu",), "input_layer.2")
    for i, (in_c, depth, _) in enumerate(cfg.unit_specs()):
        b, k = f"body_{i}", f"body.{i}"
        if in_c != depth:
            conv((b, "shortcut_conv"), f"{k}.shortcut_layer.0")
            bn((b, "shortcut_bn"), f"{k}.shortcut_layer.1")
        bn((b, "bn1"), f"{k}.res_layer.0")
        conv((b, "conv1"), f"{k}.res_layer.1")
        prelu((b, "prelu"), f"{k}.res_layer.2")
        conv((b, "conv2"), f"{k}.res_layer.3")
        bn((b, "bn2"), f"{k}.res_layer.4")
        conv((b, "se", "fc1"), f"{k}.res_layer.5.fc1")
        conv((b, "se", "fc2"), f"{k}.res_layer.5.fc2")
    for j in range(cfg.style_num):
        n_convs = int(round(math.log2(cfg.spatial_of(j))))
        for c in range(n_convs):
            conv((f"styles_{j}", f"conv_{c}"), f"styles.{j}.convs.{2 * c}", bias=True)  # convs.{odd} = LeakyReLU
        rows.append(("params", (f"styles_{j}", "linear", "weight"), f"{prefix}styles.{j}.linear.weight", "linear"))
        rows.append(("params", (f"styles_{j}", "linear", "bias"), f"{prefix}styles.{j}.linear.bias", "id"))
    conv(("latlayer1",), "latlayer1", bias=True)
    conv(("latlayer2",), "latlayer2", bias=True)
    return rows


def _torch_shape(shape: Sequence[int], transform: str) -> tuple[int, ...]:
    if transform == "conv":  # HWIO -> OIHW
        h, w, i, o = shape
        return (o, i, h, w)
    if transform == "linear":
        return tuple(shape[::-1])
    return tuple(shape)


def _apply(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return np.ascontiguousarray(rearrange(value, "o i kh kw -> kh kw i o"))
    if transform == "linear":
        return np.ascontiguousarray(value.T)
    return value


def _count(sd: StateDict, fmt: str, step: int = 1) -> int:
    """How many of ``fmt.format(0)``, ``fmt.format(step)``, ``fmt.format(2 * step)``, ... are keys, in a row."""
    n = 0
    while fmt.format(n * step) in sd:
        n += 1
    return n


def infer_encoder_config(sd: StateDict, prefix: str = "encoder.", input_nc: int | None = None,
                         style_num: int | None = None, units: Sequence[int] | None = None):
    """Read an :class:`~smis_jax.nets.psp.EncoderConfig` off the keys/shapes (given values are checked against them)."""
    src = sd.source
    first = f"{prefix}input_layer.0.weight"
    if first not in sd:
        raise ConversionError(f"{src}: missing key '{first}': not a GradualStyleEncoder state dict "
                              f"(keys start with {sorted({k.split('.')[0] for k in sd.keys()})})")
    w_in = sd.shape(first)
    if len(w_in) != 4:
        raise ConversionError(f"{src}: key '{first}' has shape {w_in}, expected (C, input_nc, 3, 3)")
    if input_nc is not None and w_in[1] != input_nc:
        raise ConversionError(f"{src}: encoder takes {w_in[1]} input channels ('{first}' {w_in}), "
                              f"but input_nc={input_nc} was requested")

    n_units = _count(sd, prefix + "body.{}.res_layer.1.weight")
    if n_units < 4:
        raise ConversionError(f"{src}: found {n_units} body units ('{prefix}body.N.res_layer.1.weight'), need >= 4")
    ins = [sd.shape(f"{prefix}body.{i}.res_layer.0.weight")[0] for i in range(n_units)]
    depths = [sd.shape(f"{prefix}body.{i}.res_layer.1.weight")[0] for i in range(n_units)]
    # A stage starts at unit 0 and wherever the width changes (those units carry a shortcut conv).
    starts = [0] + [i for i in range(1, n_units) if depths[i] != depths[i - 1]]
    if units is not None:
        units = tuple(int(u) for u in units)
        given = list(np.cumsum((0,) + units[:-1]))
        if len(units) != 4 or sum(units) != n_units or not set(starts) <= set(given):
            raise ConversionError(f"{src}: units {units} do not fit the {n_units} body units with widths {depths}")
    elif len(starts) == 4:
        units = tuple(int(b - a) for a, b in zip(starts, starts[1:] + [n_units]))
    else:
        raise ConversionError(
            f"{src}: cannot infer the 4 encoder stages from body widths {depths}: stages of equal width leave no "
            f"trace in the keys; convert it with the units per stage, `python -m convert psp {src} OUT --units "
            f"u1,u2,u3,u4` (in Python units=(...); IR-SE-50 is 3,4,14,3), and use OUT")
    stage_of = np.repeat(np.arange(4), units)
    widths = tuple(int(depths[int(np.cumsum(units)[s]) - 1]) for s in range(4))
    for i in range(n_units):
        if depths[i] != widths[stage_of[i]]:
            raise ConversionError(f"{src}: body unit {i} has width {depths[i]} inside a stage of width "
                                  f"{widths[stage_of[i]]} (units {units})")
    if w_in[0] != widths[0] or ins[0] != widths[0]:
        raise ConversionError(f"{src}: input layer width {w_in[0]} / first unit input {ins[0]} differ from the first "
                              f"stage width {widths[0]}")

    fc1 = [sd.shape(f"{prefix}body.{i}.res_layer.5.fc1.weight")[0] for i in range(n_units)]
    reduction = max(depths) // max(fc1)
    if reduction < 1 or any(d // reduction != f for d, f in zip(depths, fc1)):
        raise ConversionError(f"{src}: SE layer widths {fc1} fit no single reduction of the unit widths {depths}")

    n_styles = _count(sd, prefix + "styles.{}.linear.weight")
    if n_styles < 1:
        raise ConversionError(f"{src}: no style heads ('{prefix}styles.0.linear.weight' missing)")
    if style_num is not None and n_styles != style_num:
        raise ConversionError(f"{src}: checkpoint has {n_styles} style heads but style_num={style_num} was requested")
    style_dim = sd.shape(f"{prefix}styles.0.linear.weight")[0]
    # A coarse head reads the input's 1/16 map with log2 of its side convs: 4 at pSp's 256, 2 for a 64x64 input.
    head_convs = _count(sd, prefix + "styles.0.convs.{}.weight", step=2)
    try:
        return EncoderConfig(input_nc=int(w_in[1]), style_num=n_styles, widths=widths, units=units,
                             style_dim=int(style_dim), se_reduction=int(reduction), input_size=16 * 2 ** head_convs)
    except ConfigError as e:
        raise ConversionError(f"{src}: {e}") from None


def encoder_from_state_dict(sd: StateDict, prefix: str = "encoder.", input_nc: int | None = None,
                            style_num: int | None = None, units: Sequence[int] | None = None):
    """Consume every ``prefix``-key of a GradualStyleEncoder; returns ``(EncoderConfig, params, batch_stats)``.

    Does not call ``sd.finish()`` (the caller owns the rest of the dict). ``num_batches_tracked`` is ignored.
    """
    cfg = infer_encoder_config(sd, prefix, input_nc, style_num, units)
    expected = abstract_variables(cfg)
    trees: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for coll, path, key, transform in encoder_key_table(cfg, prefix):
        leaf = expected[coll]
        for p in path:
            leaf = leaf[p]
        value = sd.take(key, _torch_shape(leaf.shape, transform))
        node = trees[coll]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = _apply(np.asarray(value, np.float32), transform)
    sd.ignore(k for k in sd.keys() if k.startswith(prefix) and k.endswith(".num_batches_tracked"))
    check_tree(expected["params"], trees["params"], f"{sd.source}: encoder params")
    check_tree(expected["batch_stats"], trees["batch_stats"], f"{sd.source}: encoder batch_stats")
    return cfg, trees["params"], trees["batch_stats"]


def _json_safe(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, (list, tuple)):
        return all(_json_safe(v) for v in value)
    return False


def _opts_subset(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-representable training options (paths, numbers, flags); everything else is dropped."""
    out = {}
    for k, v in opts.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(k, str) and _json_safe(v):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _generator_config_json(gcfg) -> dict[str, Any]:
    if hasattr(gcfg, "to_json"):
        return gcfg.to_json()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(gcfg).items()}


def convert_checkpoint(in_path: str | os.PathLike, units: Sequence[int] | None = None) -> tuple[dict, dict[str, Any]]:
    """Read and convert a pSp ``.pt`` in memory; returns ``(config, trees)`` as :func:`convert` would save them.

    trees: ``params``, ``batch_stats`` (encoder), ``generator_params``, ``generator_noises``, ``latent_avg`` (S, D).
    """
    in_path = Path(in_path)
    if not in_path.is_file():
        raise MissingFileError(f"{in_path}: no such file")
    ckpt = torchfile.load(in_path)
    src = str(in_path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        hint = " (a rosinality StyleGAN2 file? use `python -m convert stylegan2`)" if isinstance(ckpt, Mapping) and (
            "g_ema" in ckpt) else ""
        raise ConversionError(f"{src}: not a pSp checkpoint: no 'state_dict' (top level: {keys}){hint}")
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, Mapping):
        opts = {}
    encoder_type = opts.get("encoder_type", "GradualStyleEncoder")
    if encoder_type != "GradualStyleEncoder":
        raise ConversionError(f"{src}: encoder_type '{encoder_type}' is not supported; smis-jax implements the "
                              f"GradualStyleEncoder (the one every Fewshot-SMIS recipe uses)")

    sd = StateDict(ckpt["state_dict"], source=src)
    enc_cfg, params, batch_stats = encoder_from_state_dict(
        sd, "encoder.", style_num=opts.get("style_num") if isinstance(opts.get("style_num"), int) else None,
        units=units)
    gen_cfg, gen_params, gen_noises = generator_from_state_dict(sd, prefix="decoder.")
    sd.finish()

    n_latent = getattr(gen_cfg, "n_latent", None)
    if n_latent is not None and n_latent != enc_cfg.style_num:
        raise ConversionError(f"{src}: the encoder makes {enc_cfg.style_num} styles but the decoder takes {n_latent}")
    if getattr(gen_cfg, "style_dim", enc_cfg.style_dim) != enc_cfg.style_dim:
        raise ConversionError(f"{src}: encoder style_dim {enc_cfg.style_dim} != decoder style_dim {gen_cfg.style_dim}")

    S, D = enc_cfg.style_num, enc_cfg.style_dim
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        if opts.get("start_from_latent_avg", True):
            raise ConversionError(
                f"{src}: no 'latent_avg' although the encoder was trained with start_from_latent_avg (the original "
                f"crashes on this file too); re-save it with ckpt['latent_avg'] = the StyleGAN2 checkpoint's "
                f"latent_avg repeated to shape ({S}, {D})")
        latent_avg = np.zeros((S, D), np.float32)  # codes are used as W+ directly
    latent_avg = np.asarray(latent_avg, np.float32)
    if latent_avg.shape not in ((S, D), (1, D), (D,)):
        raise ConversionError(f"{src}: latent_avg has shape {latent_avg.shape}, expected ({S}, {D})")
    if not opts.get("start_from_latent_avg", True):
        latent_avg = np.zeros((S, D), np.float32)  # the original ignores a stored latent_avg in this case
    latent_avg = np.ascontiguousarray(np.broadcast_to(latent_avg, (S, D)))

    label_nc = opts.get("label_nc")
    if isinstance(label_nc, int) and label_nc not in (0, enc_cfg.input_nc):
        warnings.warn(f"{src}: opts label_nc={label_nc} differs from the encoder's input_nc={enc_cfg.input_nc}; "
                      f"masks are one-hot encoded with {enc_cfg.input_nc} classes", stacklevel=2)
    config = {
        "kind": "psp",
        "encoder": enc_cfg.to_json(),
        "generator": _generator_config_json(gen_cfg),
        "opts": _opts_subset(opts),
        "label_nc": enc_cfg.input_nc,
        "source": in_path.name,
    }
    trees = {"params": params, "batch_stats": batch_stats, "generator_params": gen_params,
             "generator_noises": gen_noises, "latent_avg": latent_avg}
    return config, trees


def convert(in_path: str | os.PathLike, out_dir: str | os.PathLike, units: Sequence[int] | None = None) -> Path:
    """Convert a pSp ``.pt`` into a new directory (config.json + orbax trees); returns its path."""
    config, trees = convert_checkpoint(in_path, units=units)
    return save_converted(out_dir, config, **trees)


def _read(path: str | os.PathLike, with_generator: bool, units: Sequence[int] | None = None):
    """(config dict, trees) from a converted 'psp' directory or a pSp .pt (converted in memory)."""

    path = Path(path)
    trees = ["params", "batch_stats", "latent_avg"]
    if with_generator:
        trees += ["generator_params", "generator_noises"]
    if path.is_dir():
        if not is_converted(path):
            raise ConversionError(f"{path}: not a converted checkpoint (no config.json); "
                                         f"convert a pSp .pt with `python -m convert psp IN.pt OUT`")
        config, loaded = load_converted(path, "psp", trees)
        needed = ["encoder", "generator"] if with_generator else ["encoder"]
        if not all(isinstance(config.get(k), dict) for k in needed):
            raise ConversionError(f"{path}/config.json: no 'encoder'/'generator' architecture")
        return config, loaded
    if not path.exists():
        raise MissingFileError(f"{path}: no such file or directory")
    config, all_trees = convert_checkpoint(path, units=units)
    return config, {k: all_trees[k] for k in trees}


def _encoder_from(config: dict, trees: dict, where: str) -> LoadedEncoder:
    enc_cfg = EncoderConfig.from_json(config["encoder"])
    expected = abstract_variables(enc_cfg)
    check_tree(expected["params"], trees["params"], f"{where}: encoder params")
    check_tree(expected["batch_stats"], trees["batch_stats"], f"{where}: encoder batch_stats")
    latent_avg = np.asarray(trees["latent_avg"], np.float32)
    if latent_avg.shape != (enc_cfg.style_num, enc_cfg.style_dim):
        raise ConversionError(f"{where}: latent_avg has shape {latent_avg.shape}, "
                              f"expected {(enc_cfg.style_num, enc_cfg.style_dim)}")
    to_jax = functools.partial(jax.tree.map, lambda a: jnp.asarray(a, jnp.float32))
    return LoadedEncoder(enc_cfg, to_jax(trees["params"]), to_jax(trees["batch_stats"]), jnp.asarray(latent_avg))


def load(path: str | os.PathLike, units: Sequence[int] | None = None) -> LoadedEncoder:
    """Load the encoder of a converted pSp directory (``python -m convert psp``) or of a pSp ``.pt`` file.

    ``units`` is only needed for a .pt whose stage split the keys cannot show (see ``conversion/psp.py``).
    """
    config, trees = _read(path, with_generator=False, units=units)
    return _encoder_from(config, trees, str(path))


def load_pipeline(path: str | os.PathLike, units: Sequence[int] | None = None) -> Pipeline:
    """Encoder + generator (the same checkpoint's decoder) + latent_avg, from a converted directory or a .pt."""
    config, trees = _read(path, with_generator=True, units=units)
    encoder = _encoder_from(config, trees, str(path))
    try:
        gen_cfg = GeneratorConfig.from_json(config["generator"])
        generator = LoadedGenerator(gen_cfg, trees["generator_params"],
                                              noises_from_tree(trees["generator_noises"]))
    except ConversionError:
        raise
    except ConfigError as e:
        raise ConversionError(f"{path}: generator: {e}") from None
    if gen_cfg.n_latent != encoder.config.style_num or gen_cfg.style_dim != encoder.config.style_dim:
        raise ConversionError(f"{path}: the encoder makes {encoder.config.style_num}x{encoder.config.style_dim} codes "
                              f"but the generator takes {gen_cfg.n_latent}x{gen_cfg.style_dim}")
    return Pipeline(encoder, generator, encoder.latent_avg, config)
