"""Mask-to-image synthesis end to end (the CLI on real CelebAMask-HQ masks), its pieces, and its errors;
plus the viz and progress helpers it uses."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import FORWARD_TOL, rel_err
from smis_jax import data, synthesize as syn, viz
from smis_jax.io import load_pipeline
from smis_jax.io.psp import convert
from smis_jax.progress import Progress, progress

REPO = Path(__file__).resolve().parents[1]
TINY_UNITS = (1, 2, 2, 1)  # the tiny golden encoder's stages cannot be inferred (equal widths)


@pytest.fixture(scope="module")
def tiny_dir(golden, tmp_path_factory):
    return convert(golden / "psp_tiny_celebamask.pt", tmp_path_factory.mktemp("psp") / "tiny", units=TINY_UNITS)


@pytest.fixture(scope="module")
def pipeline(tiny_dir):
    return load_pipeline(tiny_dir)


@pytest.fixture(scope="module")
def masks(samples):
    return samples / "CelebAMask-HQ/test/labels"  # 28000, 28001, 28002 (512x512, 19 classes)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the CLI runs of this module (the same program is compiled once)."""
    return tmp_path_factory.mktemp("xla_cache")


def _cli(args, cache, check=True):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run([sys.executable, "-m", "smis_jax.synthesize", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _png(path):
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def test_cli_masks_to_images(tiny_dir, masks, pipeline, tmp_path, compile_cache):
    out = tmp_path / "out"
    proc = _cli(["--checkpoint", tiny_dir, "--masks", masks, "--out", out, "--grid", "--batch-size", "2"],
                compile_cache)  # 3 masks in batches of 2: the last batch is padded
    assert "wrote 6 files" in proc.stdout
    assert "synthesize: 100% 2/2 [" in proc.stderr  # the progress bar's one line when stderr is not a terminal
    names = ["28000", "28001", "28002"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in names]
    info = json.loads((out / "synthesize.json").read_text())
    assert info["masks"] == 3 and info["noise"] == "const" and info["batch_size"] == 2

    labels = np.stack([data.read_label(masks / f"{n}.png", 19) for n in names])
    for n, lab in zip(names, labels):
        image, g = _png(out / f"{n}.png"), _png(out / "grid" / f"{n}.png")
        top = viz.TITLE_HEIGHT  # titles above, the class legend (whole lines of 16 px) below
        assert image.shape == (256, 256, 3) and g.shape[1:] == (512, 3) and (g.shape[0] - top - 256) % 16 == 0
        assert g.shape[0] > top + 256
        np.testing.assert_array_equal(g[top:top + 256, :256], viz.colorize(lab))
        np.testing.assert_array_equal(g[top:top + 256, 256:], image)

    # The same images by composing the public pieces: encoder (eval) + latent_avg -> generator with the
    # stored noise (the original's inference) -> 2x2 pooling... here 128 -> 256, so pixel repetition.
    wplus = pipeline.encoder.encode(data.onehot(labels[:2], 19)) + pipeline.latent_avg
    image, _ = pipeline.generator.synthesize(wplus, noise="const")
    want = viz.to_uint8(np.asarray(image).repeat(2, axis=1).repeat(2, axis=2))
    for j in range(2):
        got = _png(out / f"{names[j]}.png").astype(int)
        assert np.abs(got - want[j]).max() <= 1  # float rounding may flip a truncation by one level
        assert np.mean(got != want[j]) < 1e-3


def test_cli_styles_reproducible(tiny_dir, masks, tmp_path, compile_cache):
    args = ["--checkpoint", tiny_dir, "--masks", masks / "28000.png", masks / "28002.png", "--styles", "2",
            "--latent-mask", "8,9,10,11,30", "--batch-size", "2", "--grid"]
    proc = _cli([*args, "--seed", "5", "--out", tmp_path / "a"], compile_cache)
    assert "warning: latent mask indices [30] are >= style_num 12 and are ignored" in proc.stderr
    files = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert files == ["28000_s0.png", "28000_s1.png", "28002_s0.png", "28002_s1.png"]
    for f in files:
        assert _png(tmp_path / "a" / f).shape == (256, 256, 3)
    grid = _png(tmp_path / "a" / "grid" / "28000.png")
    assert grid.shape[1:] == (768, 3) and grid.shape[0] > viz.TITLE_HEIGHT + 256
    assert (tmp_path / "a/28000_s0.png").read_bytes() != (tmp_path / "a/28000_s1.png").read_bytes()

    # Same seed, same bytes: run again in this process (also proves the CLI is the library's `run`).
    assert syn.main([str(a) for a in [*args, "--seed", "5", "--out", tmp_path / "b"]]) == 0
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_styles_do_not_depend_on_batching(pipeline, masks):
    labels = np.stack([data.read_label(masks / f"{n}.png", 19) for n in ("28000", "28001", "28002")])
    onehot = data.onehot(labels, 19)
    key = jax.random.key(3)
    first = syn.synthesize(pipeline, onehot[:2], key, styles=2, first_index=0)  # masks 0, 1
    second = syn.synthesize(pipeline, onehot[1:], key, styles=2, first_index=1)  # masks 1, 2
    assert first.shape == (2, 2, 256, 256, 3)
    assert rel_err(first[1], second[0]) < FORWARD_TOL  # same maths, a different batch: float noise only
    assert np.abs(np.asarray(first[0, 0] - first[0, 1])).max() > 0.1  # the two styles differ
    other_seed = syn.synthesize(pipeline, onehot[:2], jax.random.key(4), styles=2, first_index=0)
    assert np.abs(np.asarray(first - other_seed)).max() > 0.1


def test_mix_latents():
    codes = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    w = jnp.full((2, 3), 100.0)
    mask = jnp.array([False, True, False, True])
    out = syn.mix_latents(codes, w, mask, 1.0)
    np.testing.assert_array_equal(out[:, [0, 2]], codes[:, [0, 2]])
    np.testing.assert_array_equal(out[:, [1, 3]], 100.0)
    out = syn.mix_latents(codes, w, mask, 0.25)
    np.testing.assert_allclose(out[:, 1], 0.25 * 100 + 0.75 * codes[:, 1])
    np.testing.assert_array_equal(out[:, 0], codes[:, 0])


def test_latent_mask_array():
    assert syn.default_latent_mask(18) == list(range(8, 18))
    np.testing.assert_array_equal(syn.latent_mask_array(None, 12), [False] * 8 + [True] * 4)
    with pytest.warns(UserWarning, match=r"\[12, 40\] are >= style_num 12"):
        np.testing.assert_array_equal(np.flatnonzero(syn.latent_mask_array([3, 12, 40], 12)), [3])
    with pytest.raises(ValueError, match=">= 0"):
        syn.latent_mask_array([-1], 12)


# ---------------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, naming the file and the reason (in-process main: no compile needed).

def _main_error(capsys, args):
    assert syn.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_error_class_count_mismatch(capsys, tiny_dir, samples, tmp_path):
    landmark = samples / "CelebALandmark-HQ/test/labels/28000.png"  # 71 classes for a 19-class model
    msg = _main_error(capsys, ["--checkpoint", tiny_dir, "--masks", landmark, "--out", tmp_path])
    assert str(landmark) in msg and "19-class model" in msg and "label value" in msg


def test_error_unreadable_mask(capsys, tiny_dir, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bad.png").write_bytes(b"garbage")
    msg = _main_error(capsys, ["--checkpoint", tiny_dir, "--masks", tmp_path / "m", "--out", tmp_path / "o"])
    assert "bad.png: cannot read image" in msg


def test_error_bad_checkpoints(capsys, masks, tmp_path):
    msg = _main_error(capsys, ["--checkpoint", tmp_path / "nothing", "--masks", masks, "--out", tmp_path / "o"])
    assert "nothing" in msg and "no such file" in msg
    other = tmp_path / "sg2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "stylegan2"}))
    msg = _main_error(capsys, ["--checkpoint", other, "--masks", masks, "--out", tmp_path / "o"])
    assert "holds a 'stylegan2' checkpoint, expected 'psp'" in msg
    msg = _main_error(capsys, ["--checkpoint", tmp_path, "--masks", masks, "--out", tmp_path / "o"])
    assert "not a converted checkpoint" in msg


def test_error_bad_arguments(capsys, tiny_dir, masks, tmp_path):
    msg = _main_error(capsys, ["--checkpoint", tiny_dir, "--masks", masks, "--out", tmp_path, "--styles", "1",
                               "--latent-mask=-1,8"])
    assert ">= 0" in msg
    msg = _main_error(capsys, ["--checkpoint", tiny_dir, "--masks", tmp_path / "none.png", "--out", tmp_path])
    assert "none.png: no such file" in msg
    msg = _main_error(capsys, ["--checkpoint", tiny_dir, "--masks", masks, masks / "28000.png", "--out", tmp_path])
    assert "same output '28000'" in msg


# ---------------------------------------------------------------------------------------------------------------
# viz and progress.

def test_palette_and_colorize():
    pal = viz.palette(19)
    np.testing.assert_array_equal(pal[:3], [[0, 0, 0], [204, 0, 0], [76, 153, 0]])
    np.testing.assert_array_equal(viz.palette(151)[:19], pal)  # prefix-stable
    # Past CelebAMask-HQ's 19: rows of numpy's PCG64 stream for seed 0, integers(0, 256, (237, 3), uint8), written
    # down once (ADE20K ids in exports drawn with this palette keep their colours across versions).
    pal151 = viz.palette(151)
    np.testing.assert_array_equal(pal151[[19, 20, 100, 150]],
                                  [[95, 130, 194], [217, 207, 235], [215, 128, 11], [44, 140, 96]])
    assert len({tuple(c) for c in pal151}) == 151  # every class of a 151-class domain has its own colour
    assert len({tuple(c) for c in viz.palette(256)}) > 250
    lab = np.array([[0, 1], [18, 150]], np.uint8)
    col = viz.colorize(lab)
    assert col.dtype == np.uint8 and col.shape == (2, 2, 3)
    np.testing.assert_array_equal(col[1, 0], [0, 204, 0])
    with pytest.raises(ValueError, match="integer class ids"):
        viz.colorize(np.zeros((2, 2), np.float32))


def test_to_uint8_truncates_like_tensor2im():
    x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(viz.to_uint8(x), [0, 0, 127, 254, 255, 255])


def test_grid_and_save_png(tmp_path):
    a = np.full((4, 3, 3), 10, np.uint8)
    b = np.full((4, 5, 3), 20, np.uint8)
    assert viz.grid([a, b]).shape == (4, 8, 3)
    g = viz.grid([[a, b], [a]], pad=1)
    assert g.shape == (9, 9, 3) and g[4, 0, 0] == 255 and g[5, 0, 0] == 10 and g[5, 8, 0] == 255
    with pytest.raises(ValueError, match="different heights"):
        viz.grid([a, np.zeros((5, 3, 3), np.uint8)])
    path = viz.save_png(tmp_path / "sub" / "g.png", g)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), g)
    with pytest.raises(ValueError, match="uint8"):
        viz.save_png(tmp_path / "f.png", g.astype(np.float32))


def test_titled_grid_adds_titles_and_a_legend_and_keeps_the_cells():
    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 256, (40, 100, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]
    plain = viz.grid(rows, pad=1)
    legend = viz.class_legend(3, ("bg", "sky", "tree"))
    assert [name for name, _ in legend] == ["0 bg", "1 sky", "2 tree"]
    titled = viz.titled_grid(rows, ["pseudo-label", "sample"], pad=1, legend=legend)
    # 16 px of titles, the grid, one 16 px legend line (three short names fit in 201 px).
    assert titled.shape == (16 + 81 + 16, 201, 3)
    np.testing.assert_array_equal(titled[16:16 + 81], plain)  # the image cells, pixel for pixel
    head, foot = titled[:16], titled[16 + 81:]
    assert head[:, :100].min() < 128 and head[:, 101:].min() < 128  # a title (black text) over each column
    for colour in viz.palette(3):  # each class's swatch, in colorize's colour
        assert np.all(foot == colour, axis=-1).sum() >= 64, colour

    narrow = viz.titled_grid([np.zeros((8, 30, 3), np.uint8)], ["mask"], legend=viz.class_legend(3))
    assert narrow.shape == (16 + 8 + 3 * 16, 30, 3)  # "class i" entries wrap one per line
    assert viz.titled_grid([np.zeros((8, 30, 3), np.uint8)], ["mask"]).shape == (16 + 8, 30, 3)  # no legend
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        viz.class_legend(3, ("a", "b"))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_quiet_when_not_a_terminal():
    out = io.StringIO()
    assert list(progress(range(5), desc="work", file=out)) == list(range(5))
    lines = out.getvalue().splitlines()  # no bar, no carriage returns: one line when it closes (within 30 s)
    assert len(lines) == 1 and lines[0].startswith("work: 100% 5/5 [") and lines[0].endswith("it/s]"), lines


def test_progress_draws_on_a_terminal():
    out = _Terminal()
    bar = Progress(total=4, desc="steps", file=out, mininterval=0.0)
    for _ in range(4):
        bar.update()
    bar.postfix = "loss 0.5"
    bar.close()
    text = out.getvalue()  # tqdm's bar, redrawn in place: the start, four updates and the close
    assert text.count("\r") == 6 and "\n" not in text[:-1], text
    last = text.split("\r")[-1]
    assert "steps:  50%|#####" in text and last.startswith("steps: 100%|") and last.endswith(", loss 0.5]\n"), text
    bar.close()  # idempotent
    assert out.getvalue() == text
