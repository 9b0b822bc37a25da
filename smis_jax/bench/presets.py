"""Benchmark presets: generator shapes of the original's checkpoints and class counts of its domains."""

from __future__ import annotations

from dataclasses import dataclass

from smis_jax.config import DOMAINS
from smis_jax.errors import UserError
from smis_jax.nets.psp import EncoderConfig
from smis_jax.nets.stylegan2 import GeneratorConfig

__all__ = ["BenchError", "LABEL_SIZE", "N_SHOTS", "Preset", "PRESETS"]

LABEL_SIZE = 256  # pseudo-labels and the encoder input are 256x256 for every domain (SPEC.md 5.2)
N_SHOTS = 5


class BenchError(UserError, ValueError):
    """A benchmark option is invalid; the message names it and the allowed values."""



def _golden_generator() -> GeneratorConfig:
    """The golden test generator's shapes (size 128, style_dim 64): compiles in seconds."""
    return GeneratorConfig(128, style_dim=64, n_mlp=4, channels={4: 64, 8: 64, 16: 48, 32: 48, 64: 32, 128: 16})


@dataclass(frozen=True)
class Preset:
    name: str
    generator: GeneratorConfig
    dense_domain: str  # DOMAINS entry whose class count dense runs use
    sparse_domain: str  # ... and sparse runs
    encoder: str  # "ir_se50" (pSp's) or "golden" (the golden test encoder)

    def n_classes(self, mode: str) -> int:
        return DOMAINS[self.dense_domain if mode == "dense" else self.sparse_domain].n_classes

    def encoder_config(self, mode: str) -> EncoderConfig:
        n_latent = self.generator.n_latent
        if self.encoder == "golden":
            return EncoderConfig.golden(self.n_classes(mode), n_latent)
        return EncoderConfig.ir_se50(self.n_classes(mode), n_latent)


PRESETS: dict[str, Preset] = {
    # FFHQ config-f: CelebAMask-HQ (19 classes, dense) and CelebALandmark-HQ (71, sparse).
    "ffhq": Preset("ffhq", GeneratorConfig.rosinality(1024, 2), "faces", "faces-landmarks", "ir_se50"),
    # LSUN church 256 config-f (151 classes); sparse runs use the cat scribbles' 9 (the same 256 config-f shapes).
    "church": Preset("church", GeneratorConfig.rosinality(256, 2), "church", "cat", "ir_se50"),
    # LSUN car 512 config-f (5 classes); sparse runs use anime's 2 (the same 512 config-f shapes).
    "car": Preset("car", GeneratorConfig.rosinality(512, 2), "car", "anime", "ir_se50"),
    # ukiyo-e 256, channel multiplier 1 (8 classes, sparse in the original; dense runs use the same count).
    "ukiyoe": Preset("ukiyoe", GeneratorConfig.rosinality(256, 1), "ukiyoe", "ukiyoe", "ir_se50"),
    "golden": Preset("golden", _golden_generator(), "golden-faces", "golden-landmarks", "golden"),
}
