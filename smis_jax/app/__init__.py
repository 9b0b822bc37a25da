"""Paint a mask, see the image: a local editor page over a synthesis export (issue 14).

    python -m smis_jax.app --checkpoint runs/faces/export            # http://127.0.0.1:7860
    python -m smis_jax.app --checkpoint EXPORT --port 8000 --variants 6 --examples masks/

``--checkpoint`` is what ``python -m smis_jax.synthesize --checkpoint`` reads (a converted pSp directory: encoder,
generator, latent_avg); its config names the domain, hence the palette, the class names and dense/sparse
painting. The encoder and the generator are compiled for the served shapes before the server listens.
:mod:`smis_jax.app.editor` is the model side, :mod:`smis_jax.app.server` the HTTP side, ``static/`` the page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "DEFAULT_CHECKPOINT"]

DEFAULT_CHECKPOINT = Path("runs/shapes/export")  # the built-in domain's model (see _default_checkpoint)


def _default_checkpoint() -> Path:
    """The model opened without ``--checkpoint``; exits with one line when there is none."""
    if DEFAULT_CHECKPOINT.is_dir():
        return DEFAULT_CHECKPOINT
    print(f"error: no model at {DEFAULT_CHECKPOINT}; pass --checkpoint EXPORT (a synthesis export, as "
          f"python -m smis_jax.synthesize --checkpoint takes)", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smis_jax.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help=f"synthesis export folder (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--variants", type=int, default=4, help="multi-modal variants per update (default 4)")
    parser.add_argument("--examples", help="folder of example label PNGs (default: EXPORT/examples if present)")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint) if args.checkpoint else _default_checkpoint()

    # Here, not at the top: --help and a missing model answer at once, without loading JAX (no import loop).
    from smis_jax.app.editor import Editor
    from smis_jax.app.server import make_server
    from smis_jax.errors import UserError

    t0 = time.perf_counter()
    try:
        editor = Editor(checkpoint, variants=args.variants, examples=args.examples)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(editor, args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    d = editor.domain
    print(f"loaded {checkpoint}: domain {d.name} ({d.mode}, {d.n_classes} classes), {args.variants} variants; "
          f"compiled in {editor.compile_s:.1f} s (ready after {time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"serving on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
