"""The editor (python -m smis_jax.app): a real server on 127.0.0.1 (ephemeral port) over the tiny golden export,
real HTTP requests, real PNGs; a real headless Chromium paints with the mouse when one is installed.

One Editor is compiled per module (the served shapes: batch 1 and 1 x 2 variants); the CLI runs in a subprocess
loads the same programs from the session's persistent XLA cache.
"""

import base64
import contextlib
import http.client
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from test_synthesize import tiny_dir  # noqa: F401  (the converted tiny golden export, module-scoped)

from smis_jax import data, export, synthesize as syn
from smis_jax.app import editor as ed
from smis_jax.app.server import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, make_server
from smis_jax.io import load_generator
from smis_jax.nets import psp
from conftest import count_traces

REPO = Path(__file__).resolve().parents[1]
VARIANTS = 2
SIZE = 256


@pytest.fixture(scope="module")
def examples(samples):
    return samples / "CelebAMask-HQ/test/labels"  # 28000, 28001, 28002 (512x512, 19 classes)


@pytest.fixture(scope="module")
def editor(tiny_dir, examples):  # noqa: F811
    return ed.Editor(tiny_dir, variants=VARIANTS, examples=examples)


@contextlib.contextmanager
def serving(editor):
    """(host, port) of a server in a thread of this process, on an ephemeral 127.0.0.1 port; stopped on exit."""
    srv = make_server(editor, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[:2]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def server(editor):
    with serving(editor) as address:
        yield address


@pytest.fixture(scope="module")
def sparse_export(golden, tmp_path_factory):
    """A 'golden-landmarks' export (71 classes, 0 = not annotated) as training writes it: the golden generator and an
    untrained tiny encoder with random weights (no tiny sparse encoder is in the goldens)."""
    gen = load_generator(golden / "stylegan2_tiny128.pt")
    enc_cfg = psp.EncoderConfig.golden(input_nc=71, style_num=gen.config.n_latent)
    shapes = psp.abstract_variables(enc_cfg)  # filled in numpy: no compile at all
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.05, a.shape).astype(np.float32), shapes["params"])
    stats = jax.tree_util.tree_map_with_path(  # running mean 0, running variance 1
        lambda path, a: np.full(a.shape, float("var" in str(path[-1])), np.float32), shapes["batch_stats"])
    latent_avg = np.broadcast_to(np.asarray(gen.truncation_latent()), (enc_cfg.style_num, enc_cfg.style_dim))
    state = types.SimpleNamespace(params=params, batch_stats=stats)
    return export.write(tmp_path_factory.mktemp("sparse") / "export", enc_cfg, state, gen, latent_avg,
                        {"dataset_type": "golden-landmarks", "label_nc": 71})


def request(server, method, path, body=None, headers=None):
    """(status, content type, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*server, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        conn.close()


def mask_json(labels):
    return ed.ids_json(np.asarray(labels, np.uint8))


def update(server, labels, seed=0, truncation=1.0):
    body = json.dumps({"mask": mask_json(labels), "seed": seed, "truncation": truncation}).encode()
    status, ctype, raw = request(server, "POST", "/api/update", body, {"Content-Type": "application/json"})
    assert status == 200 and ctype == "application/json", raw[:300]
    return json.loads(raw)


def png(b64_or_bytes):
    raw = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    assert raw.startswith(ed.PNG_SIGNATURE)
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im)


def blob(x0, y0, x1, y1, value, base=None):
    labels = np.zeros((SIZE, SIZE), np.uint8) if base is None else base.copy()
    labels[y0:y1, x0:x1] = value
    return labels


# ---------------------------------------------------------------------------------------------------------------
# Serving and synthesis.

def test_page_static_and_info(server, editor):
    status, ctype, page = request(server, "GET", "/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/editor.js" in page
    assert b"http://" not in page and b"https://" not in page  # nothing loaded from elsewhere
    for name, kind in (("editor.js", "text/javascript"), ("editor.css", "text/css")):
        status, ctype, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and ctype.startswith(kind) and b"https://" not in body
    status, _, body = request(server, "GET", "/static/../editor.py")
    assert status == 404 and "no such file" in json.loads(body)["error"]
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200
    assert (info["n_classes"], info["mode"], info["size"], info["variants"]) == (19, "dense", 256, VARIANTS)
    assert info["class_names"][:2] == ["class 0", "class 1"] and len(info["colors"]) == 19
    assert info["colors"][1] == [204, 0, 0] and info["examples"] == ["28000", "28001", "28002"]


def test_update_is_synthesize_cli(server, editor, examples, tiny_dir, tmp_path):  # noqa: F811
    """The image is `synthesize` without --styles; the variants are `--styles N --seed S --truncation T`."""
    labels = data.read_label(examples / "28001.png", 19)
    got = update(server, labels, seed=5, truncation=0.7)
    assert len(got["variants"]) == VARIANTS and got["ms"] > 0 and (got["seed"], got["truncation"]) == (5, 0.7)
    image, variants = png(got["image"]), [png(v) for v in got["variants"]]
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8

    syn.run(tiny_dir, [examples / "28001.png"], tmp_path / "plain", batch_size=1, show_progress=False)
    syn.run(tiny_dir, [examples / "28001.png"], tmp_path / "styles", styles=VARIANTS, seed=5, truncation=0.7,
            batch_size=1, show_progress=False)
    np.testing.assert_array_equal(image, png((tmp_path / "plain/28001.png").read_bytes()))
    for k in range(VARIANTS):
        np.testing.assert_array_equal(variants[k], png((tmp_path / f"styles/28001_s{k}.png").read_bytes()))
    assert np.abs(variants[0].astype(int) - variants[1]).max() > 10  # two different styles


def test_synthesize_cli_checks_truncation(tiny_dir, examples, tmp_path, capsys):  # noqa: F811
    args = ["--checkpoint", tiny_dir, "--masks", examples, "--out", tmp_path, "--styles", "2", "--truncation", "1.5"]
    assert syn.main([str(a) for a in args]) == 2
    assert capsys.readouterr().err.strip() == "error: truncation must be in [0, 1], got 1.5"


def test_seed_and_truncation_change_the_variants_not_the_image(server):
    labels = blob(60, 40, 200, 220, 1)
    a = update(server, labels, seed=1, truncation=1.0)
    b = update(server, labels, seed=2, truncation=1.0)
    c = update(server, labels, seed=1, truncation=0.0)
    assert a["image"] == b["image"] == c["image"]
    assert png(a["variants"][0]).tolist() != png(b["variants"][0]).tolist()
    assert png(a["variants"][0]).tolist() != png(c["variants"][0]).tolist()
    painted = update(server, blob(0, 0, 256, 128, 2, labels))
    # The mask drives the image (the tiny golden encoder has random weights: its images move only a little).
    assert not np.array_equal(png(painted["image"]), png(a["image"]))


def test_updates_do_not_retrace(server, editor):
    with count_traces() as traced:  # the server compiled everything at start-up: no update traces anything
        for seed, psi in ((7, 0.5), (8, 1.0), (9, 0.25)):
            update(server, blob(seed * 10, 30, 200, 150, seed % 19), seed=seed, truncation=psi)
    assert traced() == 0


def test_upload_example_and_mask_download(server, examples, tmp_path):
    want = data.read_label(examples / "28000.png", 19)  # 512x512 -> 256x256, as the pipeline reads it
    status, _, body = request(server, "POST", "/api/upload", (examples / "28000.png").read_bytes(),
                              {"Content-Type": "image/png", "X-Filename": "28000.png"})
    got = json.loads(body)
    assert status == 200 and (got["width"], got["height"]) == (256, 256)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(got["ids"]), np.uint8).reshape(256, 256), want)

    status, _, body = request(server, "GET", "/api/example?name=28002")
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(json.loads(body)["ids"]), np.uint8).reshape(256, 256),
                                  data.read_label(examples / "28002.png", 19))

    status, ctype, body = request(server, "POST", "/api/mask.png", json.dumps({"mask": mask_json(want)}).encode())
    assert status == 200 and ctype == "image/png"
    np.testing.assert_array_equal(png(body), want)  # grey values = class ids: what synthesize --masks reads
    (tmp_path / "mask.png").write_bytes(body)
    np.testing.assert_array_equal(data.read_label(tmp_path / "mask.png", 19), want)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a 4xx with a one-line message naming the problem, and the server keeps serving.

def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _update_body(**fields):
    return json.dumps({"mask": mask_json(np.zeros((SIZE, SIZE), np.uint8)), **fields}).encode()


_OUT_OF_PALETTE = np.zeros((SIZE, SIZE), np.uint8)
_OUT_OF_PALETTE[7, 5] = 19
_OUT_OF_PALETTE[100:110, 100:110] = 200

BAD = {
    "malformed json": ("/api/update", b'{"mask": ', 400, "malformed JSON"),
    "json not an object": ("/api/update", b"[1, 2]", 400, "expected an object, got list"),
    "no mask": ("/api/update", b'{"seed": 1}', 400, "missing field 'mask'"),
    "wrong size": ("/api/update", json.dumps({"mask": mask_json(np.zeros((128, 128)))}).encode(), 422,
                   "mask is 128x128, this model takes 256x256"),
    "short ids": ("/api/update", json.dumps({"mask": {"width": 256, "height": 256, "ids": "AAAA"}}).encode(), 422,
                  "mask holds 3 class ids, a 256x256 mask needs 65536"),
    "not base64": ("/api/update", json.dumps({"mask": {"width": 256, "height": 256, "ids": "%%"}}).encode(), 400,
                   "not valid base64"),
    "class id outside the palette": ("/api/update", json.dumps({"mask": mask_json(_OUT_OF_PALETTE)}).encode(), 422,
                                     "class id 19 at (x=5, y=7) is not in the palette (0..18); 101 pixels"),
    "bad seed": ("/api/update", _update_body(seed=-1), 400, "'seed' must be an integer"),
    "bad truncation": ("/api/update", _update_body(truncation=1.5), 400, "'truncation' must be a number in [0, 1]"),
    "oversized json": ("/api/update", b" " * (MAX_JSON_BYTES + 1), 413,
                       f"request body of {MAX_JSON_BYTES + 1} bytes is over the {MAX_JSON_BYTES}-byte limit"),
    "upload not a png": ("/api/upload", b"GIF89a this is not a label map", 415, "notes.gif: not a PNG file"),
    "upload corrupt png": ("/api/upload", ed.PNG_SIGNATURE + b"\x00" * 40, 400, "notes.gif: cannot read the PNG"),
    "upload oversized": ("/api/upload", ed.PNG_SIGNATURE + b"\x00" * MAX_UPLOAD_BYTES, 413,
                         f"over the {MAX_UPLOAD_BYTES}-byte limit"),
    "upload too many pixels": ("/api/upload", _png_bytes(np.zeros((4097, 4097), np.uint8)), 413,
                               "notes.gif: 4097x4097 pixels is too large"),
    "upload not square": ("/api/upload", _png_bytes(np.zeros((200, 300), np.uint8)), 422,
                          "notes.gif: mask is 300x200; masks must be square"),
    "upload class id outside the palette": ("/api/upload", _png_bytes(_OUT_OF_PALETTE), 422,
                                            "notes.gif: label value 19 at (x=5, y=7) is not a class id of a "
                                            "19-class model"),
    "mask.png wrong size": ("/api/mask.png", json.dumps({"mask": mask_json(np.zeros((64, 256)))}).encode(), 422,
                            "mask is 256x64"),
    "unknown endpoint": ("/api/nothing", b"{}", 404, "no such endpoint: POST /api/nothing"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_4xx_with_a_message(server, case):
    path, body, want_status, want_message = BAD[case]
    status, ctype, raw = request(server, "POST", path, body, {"X-Filename": "notes.gif"})
    assert ctype == "application/json"
    message = json.loads(raw)["error"]
    assert status == want_status and want_message in message, (status, message)
    assert "\n" not in message
    assert update(server, np.zeros((SIZE, SIZE), np.uint8))["image"]  # still serving


def test_bad_requests_without_a_body(server):
    status, _, raw = request(server, "GET", "/api/example?name=nope")
    assert status == 404 and json.loads(raw)["error"] == "no example mask named 'nope'"
    status, _, raw = request(server, "GET", "/favicon.ico")
    assert status == 404 and "no such page" in json.loads(raw)["error"]
    with socket.create_connection(server, timeout=30) as s:  # no Content-Length: refused, not waited on
        s.sendall(b"POST /api/update HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 411") and b"Content-Length" in head
    assert update(server, np.zeros((SIZE, SIZE), np.uint8))["image"]


def test_domain_of_export_configs():
    d = ed.domain_of({"label_nc": 19, "opts": {"dataset_type": "golden-faces"}})
    assert (d.name, d.mode, d.n_classes, d.class_names[3]) == ("golden-faces", "dense", 19, "class 3")
    d = ed.domain_of({"label_nc": 71, "opts": {"dataset_type": "golden-landmarks"}})
    assert d.mode == "sparse" and d.class_names[:2] == ("not annotated", "class 1") and d.colors.shape == (71, 3)
    d = ed.domain_of({"label_nc": 5, "opts": {"dataset_type": "celebs_seg_to_face"}})  # not ours: dense, class i
    assert (d.mode, d.n_classes) == ("dense", 5)
    with pytest.raises(ValueError, match="encoder takes 19 classes but its domain 'golden-landmarks' has 71"):
        ed.domain_of({"label_nc": 19, "opts": {"dataset_type": "golden-landmarks"}})


# ---------------------------------------------------------------------------------------------------------------
# The command line: errors in one line; a real run serves the page.

def _env():
    # This checkout whatever the cwd; conftest's matmul precision, so the programs come from the XLA cache.
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_DEFAULT_MATMUL_PRECISION": "highest"}


def test_cli_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "smis_jax.app"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no model at runs/shapes/export; pass --checkpoint EXPORT (a synthesis "
                                   "export, as python -m smis_jax.synthesize --checkpoint takes)")
    proc = subprocess.run([sys.executable, "-m", "smis_jax.app", "--checkpoint", str(tmp_path / "none")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none'}: no such file or directory"


def test_cli_serves(tiny_dir, server):  # noqa: F811  (after `server`: the programs are in the XLA cache)
    proc = subprocess.Popen([sys.executable, "-m", "smis_jax.app", "--checkpoint", str(tiny_dir), "--port", "0",
                             "--variants", str(VARIANTS)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        loaded = proc.stdout.readline()
        serving = proc.stdout.readline()
        assert "domain celebs_seg_to_face (dense, 19 classes), 2 variants" in loaded, proc.stderr.read()
        assert serving.startswith("serving on http://127.0.0.1:"), serving
        port = int(serving.split(":")[2].split()[0])
        status, _, page = request(("127.0.0.1", port), "GET", "/")
        assert status == 200 and b"editor.js" in page
        assert update(("127.0.0.1", port), blob(10, 10, 100, 100, 3))["image"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_bench_app_line(tiny_dir, editor, tmp_path, capsys):  # noqa: F811  (after `editor`: nothing to compile)
    from smis_jax import bench

    out = tmp_path / "bench.jsonl"
    assert bench.main(["app", "--checkpoint", str(tiny_dir), "--variants", str(VARIANTS), "--repeats", "2",
                       "--json-out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert (row["bench"], row["variants"], row["repeats"], row["mask_size"]) == ("app", VARIANTS, 2, 256)
    assert 0 < row["update_ms_min"] <= row["update_ms_median"] <= row["update_ms_max"]
    assert capsys.readouterr().out.startswith(f"app: {row['update_ms_median']:.0f} ms per update (median of 2; ")
    assert bench.main(["app", "--checkpoint", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none'}: no such file or directory"


# ---------------------------------------------------------------------------------------------------------------
# A real browser: headless Chromium from the system's packages, driven by Playwright.

CHROMIUM = os.environ.get("SMIS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _no_browser() -> str:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SMIS_CHROMIUM)"
    return ""


def browser(test):
    """Mark a browser test: skipped without a browser, except under CI=true, where a missing browser fails it (the
    README's set-up installs Chromium, so in CI a skip would hide a broken set-up)."""
    missing = _no_browser()
    if missing and os.environ.get("CI", "").lower() == "true":
        def fail():  # no fixtures: nothing is compiled for a test that cannot run
            pytest.fail(f"CI=true, and the browser tests cannot run: {missing}")
        fail.__name__, fail.__doc__ = test.__name__, test.__doc__
        fail.pytestmark = list(getattr(test, "pytestmark", []))  # e2e and the like stay
        return pytest.mark.browser(fail)
    return pytest.mark.browser(pytest.mark.skipif(bool(missing), reason=missing or "-")(test))


def save_screenshot(page, path: Path) -> Path:
    """The page as a 256-colour PNG (small enough for the README; the page has few colours besides the images)."""
    page.screenshot(path=str(path))
    with Image.open(path) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            path, optimize=True)
    return path


@contextlib.contextmanager
def editor_page(address):
    """A headless Chromium page on the editor at ``address``, ready (info loaded, first image shown)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1100, "height": 860})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://{address[0]}:{address[1]}/")
            page.wait_for_function("window.smisEditor && window.smisEditor.ready", timeout=60_000)
            yield page
            assert not errors, errors
        finally:
            chromium.close()


def painted_state(page) -> tuple[np.ndarray, np.ndarray]:
    """The page's mask (256, 256) class ids and the displayed image (256, 256, 3) uint8, as numpy arrays.

    For checks on what was painted where: e.g. on the built-in domain, an oracle segmenter run on the image should
    find each painted class where the mask has it.
    """
    ids = np.asarray(page.evaluate("window.smisEditor.mask()"), np.uint8)
    size = page.evaluate("window.smisEditor.size")
    src = page.get_attribute("#image", "src")
    assert src.startswith("data:image/png;base64,")
    return ids.reshape(size, size), png(src.split(",", 1)[1])


def wait_idle(page, after: int) -> None:
    """Until the page has shown an update newer than ``after`` and has no update pending."""
    page.wait_for_function(f"window.smisEditor.updates > {after} && !window.smisEditor.busy", timeout=60_000)


def paint(page, cls: int, points, brush: int = 12) -> None:
    """Choose class ``cls`` and the brush, then drag the mouse through ``points`` (mask pixel coordinates)."""
    page.click(f'.swatch[data-cls="{cls}"]')
    page.click('button[data-tool="brush"]')
    page.select_option("#brush-size", str(brush))
    box = page.locator("#canvas").bounding_box()
    size = page.evaluate("window.smisEditor.size")

    def screen(x, y):
        return box["x"] + (x + 0.5) * box["width"] / size, box["y"] + (y + 0.5) * box["height"] / size

    page.mouse.move(*screen(*points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*screen(*p), steps=8)
    page.mouse.up()


@browser
def test_browser_paint_see_and_refuse(server, editor, tmp_path):
    with editor_page(server) as page:
        blank_mask, blank = painted_state(page)
        assert not blank_mask.any()
        shown = page.evaluate("window.smisEditor.updates")

        paint(page, 1, [(30, 60), (225, 60), (225, 200)])  # an L of class 1
        paint(page, 13, [(128, 100), (128, 235)], brush=20)  # a thick vertical bar of class 13
        wait_idle(page, shown)
        mask, image = painted_state(page)
        assert (mask[60, 30:226] == 1).all() and (mask[60:201, 225] == 1).all()
        assert (mask[100:236, 128] == 13).all() and (mask[100:236, 120:137] == 13).all()
        assert set(np.unique(mask)) == {0, 1, 13}
        assert not np.array_equal(image, blank)  # the image changed (a little: the tiny golden model's weights
        # are random; on a trained model this is where an oracle segmenter checks the painted classes)
        np.testing.assert_array_equal(image, png(editor.update(mask).image))  # and it is this mask's image
        assert len(page.locator("#variants img").all()) == VARIANTS

        with page.expect_download() as got:
            page.click("#download-mask")
        assert got.value.suggested_filename == "mask.png"
        np.testing.assert_array_equal(data.read_label(got.value.path(), 19), mask)  # synthesize --masks reads it
        with page.expect_download() as got:
            page.click("#download-image")
        assert got.value.suggested_filename == "image_seed0.png"
        np.testing.assert_array_equal(png(Path(got.value.path()).read_bytes()), image)

        page.click("#undo")  # the bar goes, the L stays
        shown = page.evaluate("window.smisEditor.updates")
        wait_idle(page, shown)
        assert set(np.unique(painted_state(page)[0])) == {0, 1}
        page.click("#redo")
        np.testing.assert_array_equal(painted_state(page)[0], mask)

        page.click('.swatch[data-cls="5"]')  # flood fill: the whole (connected) background becomes class 5
        page.click('button[data-tool="fill"]')
        box = page.locator("#canvas").bounding_box()
        page.mouse.click(box["x"] + 3, box["y"] + box["height"] - 3)
        np.testing.assert_array_equal(painted_state(page)[0], np.where(mask == 0, 5, mask))
        page.click('button[data-tool="eraser"]')  # the eraser paints class 0
        page.mouse.move(box["x"] + 3, box["y"] + 3)
        page.mouse.down()
        page.mouse.move(box["x"] + 60, box["y"] + 3, steps=5)
        page.mouse.up()
        assert (painted_state(page)[0][:4, :20] == 0).all()
        page.click("#undo")
        page.click("#undo")
        np.testing.assert_array_equal(painted_state(page)[0], mask)

        page.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "image/png",
                                                "buffer": b"these are not pixels"}])
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "notes.txt: not a PNG file" in page.inner_text("#error")
        assert set(np.unique(painted_state(page)[0])) == {0, 1, 13}  # the mask was kept

        shown = page.evaluate("window.smisEditor.updates")
        page.select_option("#examples", "28000")  # a real parsing map, for the screenshot
        wait_idle(page, shown)
        assert page.is_hidden("#error")  # the success cleared the older error
        page.evaluate("document.getElementById('palette').scrollTop = 0")
        # SMIS_EDITOR_SCREENSHOT=docs/editor.png python -m pytest tests/test_app.py -k browser: the README's picture
        save_screenshot(page, Path(os.environ.get("SMIS_EDITOR_SCREENSHOT") or tmp_path / "editor.png"))


@browser
def test_browser_sparse_scribbles(sparse_export):
    """A sparse domain: a blank (not annotated) page, thin default brush, scribbles of two classes; no variants."""
    sparse = ed.Editor(sparse_export, variants=0)
    assert sparse.domain.mode == "sparse" and sparse.domain.n_classes == 71
    with serving(sparse) as address, editor_page(address) as page:
        assert page.inner_text('.swatch[data-cls="0"]') == "0 not annotated"
        assert page.input_value("#brush-size") == "3"
        blank_pixel = page.evaluate("Array.from(document.getElementById('canvas').getContext('2d')"
                                    ".getImageData(10, 10, 1, 1).data)")
        assert blank_pixel == [250, 250, 250, 255]  # class 0 shows as a blank page, not as black
        mask, blank = painted_state(page)
        assert not mask.any()
        shown = page.evaluate("window.smisEditor.updates")
        paint(page, 3, [(40, 40), (200, 60)], brush=3)
        paint(page, 70, [(128, 100), (140, 220)], brush=3)
        wait_idle(page, shown)
        mask, image = painted_state(page)
        assert set(np.unique(mask)) == {0, 3, 70} and (mask == 0).mean() > 0.97  # scribbles, not regions
        assert mask[40, 40] == 3 and mask[220, 140] == 70
        np.testing.assert_array_equal(image, png(sparse.update(mask).image))
        assert not np.array_equal(image, blank)
        assert len(page.locator("#variants img").all()) == 0


# The built-in model for the browser test: SMIS_SHAPES_EXPORT when set, else trained here by the main job's command
# for TRAIN_STEPS steps (its 300 inversion steps, its other settings: 64x64 masks, batch 32, linear labels, the image
# term; 800 steps = 25,600 samples, half the main job: ~9 minutes on 2 cores before the image term became the
# default, its training part ~1.7x since; it passed CI so on 2026-12-07). Measured 2026-12-07 without the image term:
# at 400 steps the band the second stroke turns to sky came out mountain (6971 px) over sky (5324), so the check
# failed honestly; the 800-step checkpoints of the main job at seeds 0 and 1 pass it, and so does the full 1600-step
# export of seed 0.
SHAPES_EXPORT = os.environ.get("SMIS_SHAPES_EXPORT")
TRAIN_STEPS = 800


@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
    if SHAPES_EXPORT:
        return Path(SHAPES_EXPORT)
    work = tmp_path_factory.mktemp("shapes") / "run"
    every = str(TRAIN_STEPS)
    proc = subprocess.run([sys.executable, "-m", "train.run", "--domain", "shapes", "--workdir", str(work),
                           "--max-steps", every, "--save-every", every, "--image-every", every, "--eval-every", every],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "export"


@browser
@pytest.mark.e2e
def test_browser_builtin_oracle_finds_the_painted_classes(shapes_export):
    """On the built-in domain (a model the suite trains on a short schedule, see ``shapes_export``): paint sky
    over the top and grass below; the oracle segmenter, run on the image the page shows, finds each painted class
    where it was painted (its majority label there). Then paint the sky further down: the band that was grass must
    turn to sky in the image, so the image follows the paint, not a habit. Then the Refine control: the methods
    this export runs, fs first, and the refined image the click shows is the editor's refine() of the mask.

    Only sky and grass, the classes every short-schedule model draws reliably. (With the encoder's offset head, the
    default since 2026-12-07, the full main job also places suns, lakes, trees and houses: README, "The built-in
    domain".)"""
    from smis_jax.builtin import shapes

    def majority(image, region):
        seg = shapes.segment(image.astype(np.float32) / 127.5 - 1)
        return np.bincount(seg[region], minlength=len(shapes.CLASS_NAMES))

    built = ed.Editor(shapes_export, variants=0)
    assert built.domain.name == "shapes"
    with serving(built) as address, editor_page(address) as page:
        assert page.inner_text('.swatch[data-cls="3"]').endswith("grass")
        shown = page.evaluate("window.smisEditor.updates")
        page.click('.swatch[data-cls="3"]')  # grass everywhere (flood fill of the blank canvas)
        page.click('button[data-tool="fill"]')
        box = page.locator("#canvas").bounding_box()
        page.mouse.click(box["x"] + 3, box["y"] + box["height"] - 3)
        for y in range(8, 100, 24):  # sky: the top 40%, in broad strokes
            paint(page, 0, [(0, y), (255, y)], brush=32)
        wait_idle(page, shown)
        mask, image = painted_state(page)
        for cls in (0, 3):
            region = mask == cls
            assert region.sum() > 10_000
            found = majority(image, region)
            assert found.argmax() == cls, (shapes.CLASS_NAMES[cls], found)

        band = (mask == 3) & (np.arange(256)[:, None] < 160)  # grass now, sky next
        assert band.sum() > 10_000 and majority(image, band).argmax() == 3
        shown = page.evaluate("window.smisEditor.updates")
        for y in range(104, 160, 24):
            paint(page, 0, [(0, y), (255, y)], brush=32)
        wait_idle(page, shown)
        mask, image = painted_state(page)
        assert (mask[band] == 0).all()
        found = majority(image, band)
        assert found.argmax() == 0, ("sky", found)

        # Refine: the select offers the methods this export runs (fs first), the click shows the refined image
        # while the page stays live, and it is the editor's own refine() of this mask.
        offered = page.eval_on_selector_all("#refine-method option", "os => os.map(o => o.value)")
        assert offered == ["fs", "wplus", "original"] and sorted(offered) == sorted(built.info()["refine"])
        assert page.input_value("#refine-method") == "fs"
        page.fill("#refine-steps", "10")
        page.click("#refine")
        page.wait_for_function("document.getElementById('refined').dataset.refines === '1'", timeout=300_000)
        assert page.inner_text("#refine-status").startswith("refined: fs, 10 steps")
        shown_refined = png(page.get_attribute("#refined", "src").split(",", 1)[1])
        np.testing.assert_array_equal(shown_refined, png(built.refine(mask.astype(np.uint8), "fs", 10).image))
