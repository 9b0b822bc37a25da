"""NVIDIA's StyleGAN2 generators (stylegan2-ada-pytorch and TensorFlow pickles) -> a rosinality state dict.

Both formats are mapped key by key onto rosinality's names and layouts (CONVERSION.md 2.1-2.2); the rosinality
table in ``conversion/stylegan2.py`` then builds the Flax tree, so one place knows our layout. What a weight
mapping cannot express travels beside the state dict as :class:`Extras`: ``conv_clamp`` (a GeneratorConfig
field), the mapping's learning-rate multiplier (``lr_mlp``) and ``w_avg`` / ``dlatent_avg`` (``latent_avg``,
the truncation centre). Layers that ADA runs in float16 are computed in float32 (ADA's ``force_fp32=True``).

stylegan2-ada-pytorch, ``G_ema`` only (``G``, ``D``, ``augment_pipe`` are ignored); block ``b{r}``, r >= 8, is
rosinality block k = log2(r) - 3; noise n = 0 for ``b4.conv1``, 2k+1 / 2k+2 for ``b{r}.conv0`` / ``.conv1``.
``<L>`` is a styled conv: ``b4.conv1`` -> ``conv1``, ``b{r}.conv0`` -> ``convs.{2k}``, ``b{r}.conv1`` ->
``convs.{2k+1}``; ``<T>`` a ToRGB: ``b4.torgb`` -> ``to_rgb1``, ``b{r}.torgb`` -> ``to_rgbs.{k}``:

| ADA key (``synthesis.`` omitted)    | shape         | rosinality key                      | transform          |
|-------------------------------------|---------------|-------------------------------------|--------------------|
| ``mapping.fc{i}.weight`` / ``bias`` | (D, D) / (D,) | ``style.{i+1}.weight`` / ``bias``   | as is              |
| ``mapping.w_avg``                   | (D,)          | ``latent_avg``                      | as is              |
| ``b4.const``                        | (C, 4, 4)     | ``input.input`` (1, C, 4, 4)        | [None]             |
| ``<L>.weight``                      | (O, I, 3, 3)  | ``.conv.weight`` (1, O, I, 3, 3)    | [None] * sqrt(9I)  |
| ``<L>.affine.weight`` / ``bias``    | (I, D) / (I,) | ``.conv.modulation.weight``/``bias``| as is (+1 stored)  |
| ``<L>.noise_strength``              | ()            | ``.noise.weight`` (1,)              | reshape            |
| ``<L>.noise_const``                 | (r, r)        | ``noises.noise_{n}`` (1, 1, r, r)   | reshape            |
| ``<L>.bias``                        | (O,)          | ``.activate.bias``                  | as is              |
| ``b{r}.conv0.resample_filter``      | (4, 4)        | ``convs.{2k}.conv.blur.kernel``     | * 4 (up gain)      |
| ``<T>.weight``, ``<T>.affine.*``    | (3, I, 1, 1)  | ``.conv.weight``, ``.conv.modulation.*`` | [None] / as is|
| ``<T>.bias``                        | (3,)          | ``.bias`` (1, 3, 1, 1)              | reshape            |
| ``b{r}.resample_filter``            | (4, 4)        | ``to_rgbs.{k}.upsample.kernel``     | * 4                |

Ignored: ``b4.resample_filter`` and the ``conv1.resample_filter`` buffers (ADA's forward never uses them). A layer
built with ``use_noise=False`` gets noise strength 0 and zero buffers.

Weight gain: ADA's styled conv has no ``1/sqrt(fan_in)`` and demodulates ``W*s`` with ``eps = 1e-8``; rosinality
scales by ``1/sqrt(9I)`` first, so its eps acts on the scaled weight. Storing ``W*sqrt(9I)`` makes rosinality's
``scale*W'`` equal ADA's ``W``, eps included. ToRGB's ``1/sqrt(I)`` is the same in both (ADA applies it to the
styles). TF weights are not rescaled: TF scales before demodulating, as rosinality does, and rosinality's
``convert_weight.py`` copies them unscaled too (a TF pickle converted here equals the published ``.pt`` files).

TensorFlow, ``Gs`` only (``G``, ``D`` ignored); ``<L>`` is ``synthesis/4x4/Conv`` -> ``conv1``,
``{r}x{r}/Conv0_up`` -> ``convs.{2k}``, ``{r}x{r}/Conv1`` -> ``convs.{2k+1}``; ``<T>`` is ``{r}x{r}/ToRGB``:

| TF variable                         | shape         | rosinality key                      | transform          |
|-------------------------------------|---------------|-------------------------------------|--------------------|
| ``mapping/Dense{i}/weight``/``bias``| (D, D) / (D,) | ``style.{i+1}.weight`` / ``bias``   | ``.T`` / as is     |
| ``dlatent_avg``                     | (D,)          | ``latent_avg``                      | as is              |
| ``synthesis/4x4/Const/const``       | (1, C, 4, 4)  | ``input.input``                     | as is              |
| ``<L>/weight``                      | (3, 3, I, O)  | ``.conv.weight``                    | see below          |
| ``<L>/mod_weight`` / ``mod_bias``   | (D, I) / (I,) | ``.conv.modulation.weight``/``bias``| ``.T`` / ``+ 1``   |
| ``<L>/noise_strength`` / ``bias``   | () / (O,)     | ``.noise.weight`` / ``.activate.bias`` | reshape / as is |
| ``<T>/weight``, ``mod_*``, ``bias`` | (1, 1, I, 3)  | ``to_rgb1`` / ``to_rgbs.{k}``       | as for ``<L>``     |
| ``synthesis/noise{n}``              | (1, 1, r, r)  | ``noises.noise_{n}``                | as is              |

Weights: ``transpose(3, 2, 0, 1)[None]``, ``Conv0_up`` flipped ``[::-1, ::-1]`` first (TF's ``upsample_conv_2d``
flips before its transposed conv). Ignored: ``synthesis/lod`` (progressive-growing state). The FIR buffers come
from ``resample_kernel`` (default [1, 3, 3, 1]), as TF builds them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from smis_jax.io import nvidiafile
from smis_jax.io.converted import ConversionError, StateDict
from smis_jax.io.nvidiafile import PersistentObject, TFNetwork

__all__ = ["Extras", "read_pickle", "ada_to_rosinality", "tf_to_rosinality"]


@dataclass(frozen=True)
class Extras:
    """What travels beside the rosinality state dict."""

    conv_clamp: float | None
    lr_mlp: float
    latent_avg: np.ndarray | None
    source_format: str  # 'stylegan2-ada-pytorch' or 'tensorflow'


def read_pickle(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Extras]:
    """An NVIDIA network pickle -> (rosinality generator state dict, extras). One-line errors name the file."""
    path = os.fspath(path)
    data = nvidiafile.load(path)
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        if "G_ema" not in data:
            keys = ", ".join(repr(k) for k in list(data)[:6])
            raise ConversionError(f"{path}: no 'G_ema' entry (top-level keys: {keys}); not a stylegan2-ada-pytorch "
                                  f"network snapshot")
        if not isinstance(data["G_ema"], PersistentObject):
            raise ConversionError(f"{path}: 'G_ema' is a {type(data['G_ema']).__name__}, expected a network object")
        return ada_to_rosinality(data["G_ema"], f"{path} [G_ema]")
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data):
        return tf_to_rosinality(data[2], f"{path} [Gs]")
    what = (f"a tuple of {len(data)}" if isinstance(data, tuple) else f"a {type(data).__name__}")
    raise ConversionError(f"{path}: the pickle holds {what}; expected a stylegan2-ada-pytorch snapshot (a dict with "
                          f"'G_ema') or a TensorFlow StyleGAN2 pickle (a tuple (G, D, Gs))")


def _filter_x4(f: np.ndarray, where: str) -> np.ndarray:
    """ADA's normalised FIR filter -> rosinality's buffer (gain 4 of the 2x upsampling included)."""
    f = np.asarray(f, np.float32)
    if not np.array_equal(f, f[::-1, ::-1]):
        raise ConversionError(f"{where}: resample filter {f.tolist()} is not symmetric; only symmetric FIR filters "
                              f"(as every StyleGAN2 uses) are supported")
    return f * 4


def ada_to_rosinality(g: PersistentObject, src: str) -> tuple[dict[str, np.ndarray], Extras]:
    """stylegan2-ada-pytorch ``G_ema`` (as :class:`PersistentObject`) -> rosinality state dict + extras."""
    if g.class_name != "Generator":
        raise ConversionError(f"{src}: is a {g.class_name}, expected a Generator")
    if g.get("c_dim", 0):
        raise ConversionError(f"{src}: a conditional generator (c_dim={g.get('c_dim')}); class-conditional pickles "
                              f"are not supported")
    if g.get("img_channels", 3) != 3:
        raise ConversionError(f"{src}: img_channels={g.get('img_channels')}; only RGB generators (3) are supported")
    mapping, synthesis = g.modules.get("mapping"), g.modules.get("synthesis")
    if not isinstance(mapping, PersistentObject) or not isinstance(synthesis, PersistentObject):
        raise ConversionError(f"{src}: no 'mapping' and 'synthesis' networks (modules: {', '.join(g.modules)})")
    blocks = list(synthesis.modules)
    if not blocks or not all(b.startswith("b") and b[1:].isdigit() for b in blocks):
        odd = next((b for b in blocks if not (b.startswith("b") and b[1:].isdigit())), None)
        kind = "a StyleGAN3 (alias-free) generator" if odd in ("input", None) or (odd or "").startswith("L") else \
            "not a StyleGAN2 synthesis network"
        raise ConversionError(f"{src}: synthesis layer '{odd}' ({kind}); only StyleGAN2 generators are supported")
    resolutions = [int(b[1:]) for b in blocks]
    size = resolutions[-1]
    if resolutions != [2**i for i in range(2, int(math.log2(size)) + 1)] or size != 2 ** int(math.log2(size)):
        raise ConversionError(f"{src}: synthesis blocks {blocks} are not b4, b8, ..., b<size>")

    clamps, lrs = set(), set()
    for name, module in g.named_modules():
        if module.class_name == "SynthesisBlock" and module.get("architecture", "skip") != "skip":
            raise ConversionError(f"{src}: '{name}' has architecture '{module.get('architecture')}'; only 'skip' "
                                  f"generators (every ADA/StyleGAN2 config-e/f G) are supported")
        if module.class_name in ("SynthesisLayer", "ToRGBLayer"):
            clamps.add(module.get("conv_clamp"))
        if module.class_name == "SynthesisLayer" and module.get("activation", "lrelu") != "lrelu":
            raise ConversionError(f"{src}: '{name}' uses activation '{module.get('activation')}', expected 'lrelu'")
        if name.startswith("mapping.fc"):
            if module.get("activation") != "lrelu":
                raise ConversionError(f"{src}: '{name}' uses activation '{module.get('activation')}', expected 'lrelu'")
            lrs.add(float(module.get("bias_gain", 1)))
    if "embed" in mapping.modules:
        raise ConversionError(f"{src}: a conditional generator (mapping.embed); class-conditional pickles are not "
                              f"supported")
    if len(clamps) != 1:
        raise ConversionError(f"{src}: layers differ in conv_clamp ({sorted(map(str, clamps))}); one value expected")
    if len(lrs) != 1:
        raise ConversionError(f"{src}: mapping layers differ in lr_multiplier ({sorted(lrs)}); one value expected")
    conv_clamp = clamps.pop()
    conv_clamp = None if conv_clamp is None else float(conv_clamp)

    sd = StateDict(g.state_dict(), src)
    d = sd.shape("mapping.fc0.weight")[0]
    n_mlp = 0
    out: dict[str, np.ndarray] = {}
    while f"mapping.fc{n_mlp}.weight" in sd:
        i = n_mlp
        out[f"style.{i + 1}.weight"] = sd.take(f"mapping.fc{i}.weight", (d, d))
        out[f"style.{i + 1}.bias"] = sd.take(f"mapping.fc{i}.bias", (d,))
        n_mlp += 1
    latent_avg = sd.take("mapping.w_avg", (d,)) if "mapping.w_avg" in sd else None

    c4 = sd.shape("synthesis.b4.const")[0]
    out["input.input"] = sd.take("synthesis.b4.const", (c4, 4, 4))[None]
    noises: list[np.ndarray] = []

    def layer(ada: str, ros: str, cin: int, res: int, up: bool) -> int:
        cout = sd.shape(f"{ada}.weight")[0]
        w = sd.take(f"{ada}.weight", (cout, cin, 3, 3)).astype(np.float64) * math.sqrt(cin * 9)
        out[f"{ros}.conv.weight"] = w.astype(np.float32)[None]
        out[f"{ros}.conv.modulation.weight"] = sd.take(f"{ada}.affine.weight", (cin, d))
        out[f"{ros}.conv.modulation.bias"] = sd.take(f"{ada}.affine.bias", (cin,))
        out[f"{ros}.activate.bias"] = sd.take(f"{ada}.bias", (cout,))
        if f"{ada}.noise_strength" in sd or f"{ada}.noise_const" in sd:
            out[f"{ros}.noise.weight"] = sd.take(f"{ada}.noise_strength", ()).reshape(1)
            noises.append(sd.take(f"{ada}.noise_const", (res, res)).reshape(1, 1, res, res))
        else:  # use_noise=False
            out[f"{ros}.noise.weight"] = np.zeros(1, np.float32)
            noises.append(np.zeros((1, 1, res, res), np.float32))
        if up:
            out[f"{ros}.conv.blur.kernel"] = _filter_x4(sd.take(f"{ada}.resample_filter", (4, 4)),
                                                        f"{src}: {ada}.resample_filter")
        else:
            sd.ignore([f"{ada}.resample_filter"])
        return cout

    def torgb(ada: str, ros: str, cin: int):
        out[f"{ros}.conv.weight"] = sd.take(f"{ada}.weight", (3, cin, 1, 1))[None]
        out[f"{ros}.conv.modulation.weight"] = sd.take(f"{ada}.affine.weight", (cin, d))
        out[f"{ros}.conv.modulation.bias"] = sd.take(f"{ada}.affine.bias", (cin,))
        out[f"{ros}.bias"] = sd.take(f"{ada}.bias", (3,)).reshape(1, 3, 1, 1)

    cin = layer("synthesis.b4.conv1", "conv1", c4, 4, False)
    torgb("synthesis.b4.torgb", "to_rgb1", cin)
    sd.ignore(["synthesis.b4.resample_filter"])
    for k, res in enumerate(resolutions[1:]):
        b = f"synthesis.b{res}"
        cin = layer(f"{b}.conv0", f"convs.{2 * k}", cin, res, True)
        cin = layer(f"{b}.conv1", f"convs.{2 * k + 1}", cin, res, False)
        torgb(f"{b}.torgb", f"to_rgbs.{k}", cin)
        out[f"to_rgbs.{k}.upsample.kernel"] = _filter_x4(sd.take(f"{b}.resample_filter", (4, 4)),
                                                         f"{src}: {b}.resample_filter")
    sd.finish()
    for i, n in enumerate(noises):
        out[f"noises.noise_{i}"] = n
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    latent_avg = None if latent_avg is None else np.asarray(latent_avg, np.float32)
    return out, Extras(conv_clamp, lrs.pop(), latent_avg, "stylegan2-ada-pytorch")


# The static kwargs ADA's legacy.convert_tf_generator knows; it refuses any other, and so do we.
_TF_KNOWN = {"latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers",
             "label_fmaps", "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "fmap_base",
             "fmap_max", "num_fp16_res", "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity",
             "truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure"}


def tf_to_rosinality(gs: TFNetwork, src: str) -> tuple[dict[str, np.ndarray], Extras]:
    """TensorFlow StyleGAN2 ``Gs`` (as :class:`TFNetwork`) -> rosinality state dict + extras."""
    if gs.version < 4:
        raise ConversionError(f"{src}: TensorFlow network pickle version {gs.version}; version >= 4 (StyleGAN2) needed")
    kw = gs.static_kwargs
    unknown = sorted(set(kw) - _TF_KNOWN)
    if unknown:
        raise ConversionError(f"{src}: unknown TensorFlow kwarg '{unknown[0]}' = {kw[unknown[0]]!r}")
    if kw.get("label_size") or kw.get("label_fmaps"):
        raise ConversionError(f"{src}: a conditional generator (label_size={kw.get('label_size')}); class-conditional "
                              f"pickles are not supported")
    arch = kw.get("architecture") or "skip"
    variables = gs.variables()
    lod = sorted(v for v in variables if "ToRGB_lod" in v)
    if arch != "skip" or lod:
        what = (f"architecture '{arch}'" if arch != "skip" else
                f"variable '{lod[0]}' (progressive 'orig' architecture, or StyleGAN1)")
        raise ConversionError(f"{src}: {what}; only 'skip' generators (StyleGAN2 config-e/f) are supported, not "
                              f"config-a..d")
    synth = gs.components.get("synthesis")
    if not isinstance(synth, TFNetwork) or not isinstance(gs.components.get("mapping"), TFNetwork):
        raise ConversionError(f"{src}: no 'mapping' and 'synthesis' components "
                              f"({', '.join(gs.components) or 'none'})")
    for key in ("nonlinearity", "mapping_nonlinearity"):
        if kw.get(key) not in (None, "lrelu"):
            raise ConversionError(f"{src}: {key} = {kw[key]!r}; only 'lrelu' is supported")
    if (kw.get("num_channels") or 3) != 3:
        raise ConversionError(f"{src}: num_channels={kw['num_channels']}; only RGB generators (3) are supported")
    kernel = np.asarray(kw.get("resample_kernel") or [1, 3, 3, 1], np.float64)
    kernel = np.outer(kernel, kernel) if kernel.ndim == 1 else kernel
    if kernel.shape != (4, 4):
        raise ConversionError(f"{src}: resample_kernel {kernel.tolist()}; a 4-tap kernel is needed")
    fir = _filter_x4((kernel / kernel.sum()).astype(np.float32), f"{src}: resample_kernel")

    sd = StateDict(variables, src)
    sd.ignore(["synthesis/lod"])
    d = sd.shape("mapping/Dense0/weight")[1]
    out: dict[str, np.ndarray] = {}
    i = 0
    while f"mapping/Dense{i}/weight" in sd:
        out[f"style.{i + 1}.weight"] = sd.take(f"mapping/Dense{i}/weight", (d, d)).T
        out[f"style.{i + 1}.bias"] = sd.take(f"mapping/Dense{i}/bias", (d,))
        i += 1
    latent_avg = sd.take("dlatent_avg", (d,)) if "dlatent_avg" in sd else None
    c4 = sd.shape("synthesis/4x4/Const/const")[1]
    out["input.input"] = sd.take("synthesis/4x4/Const/const", (1, c4, 4, 4))
    use_noise = kw.get("use_noise", True) is not False

    def layer(tf: str, ros: str, cin: int, res: int, n: int, up: bool) -> int:
        cout = sd.shape(f"{tf}/weight")[-1]
        w = sd.take(f"{tf}/weight", (3, 3, cin, cout))
        if up:  # TF's upsample_conv_2d flips the kernel before its transposed conv
            w = w[::-1, ::-1]
            out[f"{ros}.conv.blur.kernel"] = fir
        out[f"{ros}.conv.weight"] = w.transpose(3, 2, 0, 1)[None]
        out[f"{ros}.conv.modulation.weight"] = sd.take(f"{tf}/mod_weight", (d, cin)).T
        out[f"{ros}.conv.modulation.bias"] = sd.take(f"{tf}/mod_bias", (cin,)) + 1  # TF adds the 1 at run time
        out[f"{ros}.activate.bias"] = sd.take(f"{tf}/bias", (cout,))
        if use_noise:
            out[f"{ros}.noise.weight"] = np.asarray(sd.take(f"{tf}/noise_strength", ())).reshape(1)
            out[f"noises.noise_{n}"] = sd.take(f"synthesis/noise{n}", (1, 1, res, res))
        else:
            out[f"{ros}.noise.weight"] = np.zeros(1, np.float32)
            out[f"noises.noise_{n}"] = np.zeros((1, 1, res, res), np.float32)
        return cout

    def torgb(tf: str, ros: str, cin: int):
        out[f"{ros}.conv.weight"] = sd.take(f"{tf}/weight", (1, 1, cin, 3)).transpose(3, 2, 0, 1)[None]
        out[f"{ros}.conv.modulation.weight"] = sd.take(f"{tf}/mod_weight", (d, cin)).T
        out[f"{ros}.conv.modulation.bias"] = sd.take(f"{tf}/mod_bias", (cin,)) + 1
        out[f"{ros}.bias"] = sd.take(f"{tf}/bias", (3,)).reshape(1, 3, 1, 1)

    cin = layer("synthesis/4x4/Conv", "conv1", c4, 4, 0, False)
    torgb("synthesis/4x4/ToRGB", "to_rgb1", cin)
    k, res = 0, 8
    while f"synthesis/{res}x{res}/Conv0_up/weight" in sd:
        cin = layer(f"synthesis/{res}x{res}/Conv0_up", f"convs.{2 * k}", cin, res, 2 * k + 1, True)
        cin = layer(f"synthesis/{res}x{res}/Conv1", f"convs.{2 * k + 1}", cin, res, 2 * k + 2, False)
        torgb(f"synthesis/{res}x{res}/ToRGB", f"to_rgbs.{k}", cin)
        out[f"to_rgbs.{k}.upsample.kernel"] = fir
        k, res = k + 1, res * 2
    if kw.get("resolution") not in (None, res // 2):
        raise ConversionError(f"{src}: static kwarg resolution={kw['resolution']} but the variables end at "
                              f"{res // 2}x{res // 2}")
    sd.finish()
    out = {key: np.ascontiguousarray(v, np.float32) for key, v in out.items()}
    latent_avg = None if latent_avg is None else np.asarray(latent_avg, np.float32)
    conv_clamp = kw.get("conv_clamp")
    return out, Extras(None if conv_clamp is None else float(conv_clamp), float(kw.get("mapping_lrmul") or 0.01),
                       latent_avg, "tensorflow")

