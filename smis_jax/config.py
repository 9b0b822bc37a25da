"""Domain presets and the training configuration (frozen dataclasses, validated on construction).

The seven domains are those of the original release (SPEC.md section 3); ``golden-faces`` and ``golden-landmarks`` pair the
real CelebA masks with the small golden generator (size 128) so the whole pipeline runs in CI.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from smis_jax.errors import ConfigError
from smis_jax.precision import PRECISIONS

__all__ = ["Domain", "DOMAINS", "ENCODER_SIZES", "LABELERS", "TrainConfig", "get_domain", "ConfigError"]


@dataclass(frozen=True)
class Domain:
    name: str
    folder: str  # the folder name in the original release's data/ (and in shared/samples)
    n_classes: int
    mode: Literal["dense", "sparse"]
    generator_size: int  # the default; a run may override it (TrainConfig.generator_size), checked against the G
    channel_multiplier: int
    stylegan: str  # the checkpoint the original README pairs with this domain (for messages)
    description: str
    class_names: tuple[str, ...] = ()  # one per class id, when known (the editor's palette, evaluation tables)
    builtin: bool = False  # procedural shots and test masks, and a shipped generator: no --data, no --stylegan
    # TrainConfig fields this domain runs with unless a flag says otherwise (e.g. a schedule that fits a CPU)
    train_defaults: tuple[tuple[str, Any], ...] = ()
    latent_start: int = 8  # multi-modal synthesis replaces W+ layers latent_start.. (the original's 8 at 1024)

    def __post_init__(self):
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ConfigError(f"domain {self.name}: {len(self.class_names)} class names for {self.n_classes} classes")
        if self.mode not in ("dense", "sparse"):
            raise ConfigError(f"domain {self.name}: mode must be 'dense' or 'sparse', got {self.mode!r}")
        if self.generator_size < 64 or self.generator_size & (self.generator_size - 1):
            raise ConfigError(f"domain {self.name}: generator_size must be a power of two >= 64")
        if self.n_classes < 2:
            raise ConfigError(f"domain {self.name}: n_classes must be >= 2")

    @property
    def style_num(self) -> int:
        """W+ layers of the generator (18 at 1024, 16 at 512, 14 at 256)."""
        return 2 * int(math.log2(self.generator_size)) - 2

    @property
    def latent_mask(self) -> tuple[int, ...]:
        """Layers replaced for multi-modal synthesis: latent_start.. (the original README's 8,...,17 at 1024)."""
        return tuple(range(self.latent_start, self.style_num))


SHAPES_CLASSES = ("sky", "mountain", "sun", "grass", "water", "tree", "house")  # smis_jax.builtin.shapes.CLASS_NAMES
# The built-in domains' schedule: a small encoder reading 64x64 masks (the generator's feature size; 256 cost 16x
# the encoder's work for nothing) and 1200 steps of 32 (38,400 pseudo-labelled samples: the ground truth scored while
# training flattens by then, its mean over three seeds 0.744 at 1200 and at 1600 steps, and 1200 fit the main job in
# 15 minutes on 2 cores; README, "Where training flattens"), the paper's W+ MSE plus pSp's image-space term
# (synthesis mIoU 0.445 +- 0.004 against 0.380 +- 0.006 without it over three seeds; the label-space loss was
# measured and made the images worse: README), and an offset head for the generator's 16x16 block trained by that
# term (--offset-res 16, reading the encoder's input/4 map: synthesis 0.744 with the 8x8 head, 0.472 without one, on
# the 228-kimg generator over three seeds; small objects need the finer grid; README, docs/notes-21.md); the main job
# runs on 2 CPU cores (README, BENCHMARKS.md).
# Their pseudo-labeller is the one measured best on their ground truth (docs/notes-23.md, docs/builtin/labelers.json);
# the real presets keep the paper's (no ground truth to choose by).
BUILTIN_SCHEDULE = (("encoder", "tiny"), ("mask_size", 64), ("batch_size", 32), ("learning_rate", 1e-3),
                    ("max_steps", 1200), ("inversion_steps", 300), ("save_every", 400), ("image_every", 400),
                    ("eval_every", 400), ("log_every", 50), ("labeler", "linear"), ("image_lambda", 1.0),
                    ("offset_res", 16))

DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain("faces", "CelebAMask-HQ", 19, "dense", 1024, 2, "stylegan2-ffhq-config-f.pt",
               "CelebAMask-HQ face parsing (0 = background)"),
        Domain("faces-landmarks", "CelebALandmark-HQ", 71, "sparse", 1024, 2, "stylegan2-ffhq-config-f.pt",
               "70 facial landmarks, 0 = not annotated"),
        Domain("church", "LSUNchurch", 151, "dense", 256, 2, "stylegan2-church-config-f.pt",
               "LSUN church scene parsing (ADE20K-150 ids)"),
        Domain("car", "LSUNcar", 5, "dense", 512, 2, "stylegan2-car-config-f.pt", "LSUN car parts (0 = background)"),
        Domain("cat", "LSUNcat", 9, "sparse", 256, 2, "stylegan2-cat-config-f.pt", "cat scribbles, 0 = not annotated"),
        Domain("ukiyoe", "ukiyo-e", 8, "sparse", 256, 1, "ukiyoe-256-slim-diffAug-002789.pt",
               "ukiyo-e face scribbles, 0 = not annotated"),
        Domain("anime", "anime", 2, "sparse", 512, 2,
               "2020-01-11-skylion-stylegan2-animeportraits-networksnapshot-024664.pt",
               "anime face cross, 0 = not annotated"),
        # The built-in procedural domain (smis_jax.builtin.shapes): exact masks, an oracle, a generator trained by
        # smis-jax.
        Domain("shapes", "shapes (built-in)", 7, "dense", 64, 1, "the shipped smis_jax/assets/shapes-gan",
               "procedural landscapes, exact masks (built-in)", class_names=SHAPES_CLASSES, builtin=True,
               train_defaults=BUILTIN_SCHEDULE, latent_start=6),
        Domain("shapes-scribbles", "shapes (built-in)", 8, "sparse", 64, 1, "the shipped smis_jax/assets/shapes-gan",
               "procedural landscapes, scribbles (built-in), 0 = not annotated",
               class_names=("not annotated",) + SHAPES_CLASSES, builtin=True, train_defaults=BUILTIN_SCHEDULE,
               latent_start=6),
        # For tests and quick looks: the real CelebA masks with the golden 128px generator.
        Domain("golden-faces", "CelebAMask-HQ", 19, "dense", 128, 2, "stylegan2_tiny128.pt (golden)",
               "CelebAMask-HQ masks with a 128px generator (tests)"),
        Domain("golden-landmarks", "CelebALandmark-HQ", 71, "sparse", 128, 2, "stylegan2_tiny128.pt (golden)",
               "CelebA landmarks with a 128px generator (tests)"),
    ]
}

# Encoder stage widths and units per stage. ir_se50 is pSp's; the others trade quality for memory and speed on
# small machines (the style heads stay full width: they must output the generator's style_dim).
# The pseudo-labellers (smis_jax.labelers.LABELERS, restated here so that config stays in the base layer).
LABELERS = ("paper", "knn", "multiscale", "linear")  # tests check it equals smis_jax.labelers.LABELERS

ENCODER_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "ir_se50": ((64, 128, 256, 512), (3, 4, 14, 3)),
    "small": ((32, 64, 128, 256), (1, 2, 4, 1)),
    "tiny": ((16, 32, 32, 64), (1, 1, 1, 1)),
}


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ConfigError(f"unknown domain {name!r}; choose one of: {', '.join(DOMAINS)}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides file paths. Defaults are the original's (SPEC.md 1a, 1e)."""

    domain: str = "faces"
    shots: tuple[str, ...] | int = 5  # how many training pairs (first K by name) or which basenames
    encoder: str = "ir_se50"
    batch_size: int = 2
    learning_rate: float = 1e-4
    max_steps: int = 100_000
    # Beyond the paper (0 = its constant learning rate): over the last lr_decay_steps of max_steps the learning rate
    # falls along a half cosine from learning_rate towards 0 (training.learning_rate_schedule).
    lr_decay_steps: int = 0
    l2_lambda: float = 1.0
    w_norm_lambda: float = 0.0
    train_wplus: bool = False
    topk: int = 3
    cos_th: float = 0.5
    # Beyond the paper (0 = its objective, MSE in W+ only): weight of a label-space term, the cross-entropy between
    # the pseudo-labels and the softmax (at label_temperature) of the cosine scores of the image decoded from the
    # encoder's codes (training.label_space_loss).
    label_lambda: float = 0.0
    label_temperature: float = 0.1
    # Beyond the paper: weight of an image-space term, pSp's MSE between the sample and the image decoded from the
    # encoder's codes (same noise), both average-pooled to at most 64x64 (training.image_space_loss).
    image_lambda: float = 0.0
    # How many samples of each batch the image-space term renders (0 = all): every (batch_size / image_batch)-th one,
    # so each device keeps its share. The term's cost (three generator passes per rendered sample) scales with it.
    image_batch: int = 0
    # Beyond the paper (0 = none, pSp's encoder): the encoder also predicts an offset for the generator's
    # offset_res x offset_res block (the one-pass counterpart of --refine fs; smis_jax.nets.psp.OffsetHead), trained
    # by the image- and label-space terms (it needs one of them). A side the encoder has: mask_size/16, /8 or /4.
    offset_res: int = 0
    # How generated samples are pseudo-labelled (smis_jax.labelers): 'paper' (the original's class means / annotated
    # vectors), 'knn', 'multiscale' or 'linear'.
    labeler: str = "paper"
    inversion_steps: int = 2000
    inversion_lr: float = 1.0
    inversion_l2_lambda: float = 1.0
    inversion_lpips_lambda: float = 0.8
    save_every: int = 5000
    log_every: int = 50
    image_every: int = 1000
    eval_every: int = 2500
    keep_checkpoints: int = 3
    seed: int = 0
    # The side of the one-hot masks the encoder reads and of the training pseudo-labels (pSp's 256). The built-in
    # 64 px domains read 64x64: their labels live at 64x64 anyway, and 256 costs 16x the encoder's work.
    mask_size: int = 256
    # float32 matmul/conv precision of training, inversion, labelling and evaluation (smis_jax.precision; the CLIs
    # apply it): 'highest' (full float32, parity), 'tensorfloat32' or 'default' (XLA's choice: TF32 on recent GPUs).
    precision: str = "highest"
    # The generator's output size; None = the domain preset's. Another size (e.g. AFHQ cat at 512 for 'cat') works
    # the same way: the encoder's W+ depth follows the generator, features are still tapped at 64x64.
    generator_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self):
        get_domain(self.domain)
        g = self.generator_size
        if g is not None and (not isinstance(g, int) or g < 64 or g & (g - 1)):
            raise ConfigError(f"generator_size must be None (the domain's) or a power of two >= 64, got {g!r}")
        if not isinstance(self.mask_size, int) or self.mask_size < 32 or self.mask_size & (self.mask_size - 1):
            raise ConfigError(f"mask_size must be a power of two >= 32, got {self.mask_size!r}")
        if self.encoder not in ENCODER_SIZES:
            raise ConfigError(f"unknown encoder size {self.encoder!r}; choose one of: {', '.join(ENCODER_SIZES)}")
        if isinstance(self.shots, int):
            if not 1 <= self.shots:
                raise ConfigError(f"shots must be >= 1, got {self.shots}")
        elif not self.shots:
            raise ConfigError("shots must name at least one training pair")
        for name in ("batch_size", "max_steps", "save_every", "log_every", "image_every", "eval_every",
                     "keep_checkpoints", "topk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inversion_steps < 0:
            raise ConfigError(f"inversion_steps must be >= 0, got {self.inversion_steps}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.lr_decay_steps <= self.max_steps:
            raise ConfigError(f"lr_decay_steps must lie in [0, max_steps = {self.max_steps}], got "
                              f"{self.lr_decay_steps}")
        if not self.label_lambda >= 0:
            raise ConfigError(f"label_lambda must be >= 0, got {self.label_lambda}")
        if not self.image_lambda >= 0:
            raise ConfigError(f"image_lambda must be >= 0, got {self.image_lambda}")
        if self.image_batch < 0 or (self.image_batch and self.batch_size % self.image_batch):
            raise ConfigError(f"image_batch must be 0 (the whole batch) or divide batch_size {self.batch_size}, got "
                              f"{self.image_batch}")
        if self.offset_res and self.offset_res not in (self.mask_size // 16, self.mask_size // 8, self.mask_size // 4):
            raise ConfigError(f"offset_res must be 0 (no offset head) or a side of the encoder's maps at mask_size "
                              f"{self.mask_size}: {self.mask_size // 16}, {self.mask_size // 8} or "
                              f"{self.mask_size // 4}; got {self.offset_res}")
        if self.offset_res and not (self.image_lambda or self.label_lambda):
            raise ConfigError(f"offset_res {self.offset_res} needs image_lambda or label_lambda > 0: no loss on W+ "
                              f"trains the offset head")
        if not self.label_temperature > 0:
            raise ConfigError(f"label_temperature must be > 0, got {self.label_temperature}")
        if self.labeler not in LABELERS:
            raise ConfigError(f"unknown labeler {self.labeler!r}; choose one of: {', '.join(LABELERS)}")
        if not -1.0 <= self.cos_th <= 1.0:
            raise ConfigError(f"cos_th must lie in [-1, 1], got {self.cos_th}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def for_domain(cls, domain: str, **explicit) -> "TrainConfig":
        """The configuration of a run on ``domain``: ``explicit`` values (flags given), then the domain's
        ``train_defaults``, then this class's defaults. ``None`` in ``explicit`` means "not given"."""
        values = dict(get_domain(domain).train_defaults)
        given = {k: v for k, v in explicit.items() if v is not None}
        values.update(given)
        if "offset_res" not in given and not (values.get("image_lambda") or values.get("label_lambda")):
            values["offset_res"] = 0  # a schedule's offset head goes with the terms that train it (--image-lambda 0)
        return cls(domain=domain, **values)

    @property
    def domain_preset(self) -> Domain:
        return get_domain(self.domain)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shots"] = list(self.shots) if not isinstance(self.shots, int) else self.shots
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("shots"), list):
            d["shots"] = tuple(d["shots"])
        return cls(**d)
