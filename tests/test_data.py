"""Label/photo reading: PIL NEAREST sampling as the original, label formats, and errors that name the file."""

import numpy as np
import pytest
from PIL import Image

from smis_jax import data

CELEBA = "CelebAMask-HQ"


def test_labels_equal_golden(golden, samples):
    import json

    meta = json.loads((golden / "psp_tiny_celebamask.json").read_text())
    labels = np.load(golden / "psp_tiny_celebamask_io.npz")["labels"]
    for i, rel in enumerate(meta["label_files"]):
        out = data.read_label(samples / rel, 19)
        assert out.dtype == np.uint8 and out.shape == (256, 256)
        np.testing.assert_array_equal(out, labels[i])


@pytest.mark.parametrize("rel, step, offset", [
    (f"{CELEBA}/test/labels/28000.png", 2, 1),  # 512 -> 256: pixel 2i+1
    ("CelebALandmark-HQ/train/labels/9995.png", 4, 2),  # 1024 -> 256: pixel 4i+2
])
def test_nearest_samples_pixel_centres(samples, rel, step, offset):
    src = np.asarray(Image.open(samples / rel))
    assert src.shape == (256 * step, 256 * step)
    np.testing.assert_array_equal(data.read_label(samples / rel, 256), src[offset::step, offset::step])


@pytest.mark.parametrize("h, w", [(210, 210), (300, 517), (256, 256), (97, 1000)])
def test_nearest_formula_any_size(tmp_path, h, w):
    # value encodes the position, so the sampled source pixel is visible: floor((i + 0.5) * in / 256).
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for axis, idx in (("rows", rows), ("cols", cols)):
        path = tmp_path / f"{axis}.png"
        Image.fromarray((idx % 251).astype(np.uint8), mode="L").save(path)
        got = data.read_label(path, 251)
        n_in = h if axis == "rows" else w
        src = np.floor((np.arange(256) + 0.5) * n_in / 256).astype(int)
        want = (src % 251)[:, None] if axis == "rows" else (src % 251)[None, :]
        np.testing.assert_array_equal(got, np.broadcast_to(want, (256, 256)))


def test_value_out_of_range_names_file_and_value(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    labels[10, 20] = 23
    path = tmp_path / "mask_07.png"
    Image.fromarray(labels).save(path)
    with pytest.raises(data.LabelError) as e:
        data.read_label(path, 19)
    msg = str(e.value)
    assert "mask_07.png" in msg and "23" in msg and "19-class" in msg and "(x=20, y=10)" in msg
    assert "\n" not in msg
    assert data.read_label(path, 24).max() == 23  # enough classes: fine


def test_out_of_range_pixel_lost_by_resizing_is_still_an_error(tmp_path):
    labels = np.zeros((512, 512), np.uint8)
    labels[0, 0] = 200  # NEAREST to 256 never samples pixel (0, 0)
    Image.fromarray(labels).save(tmp_path / "a.png")
    with pytest.raises(data.LabelError, match="200"):
        data.read_label(tmp_path / "a.png", 19)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for fn in (lambda p: data.read_label(p, 19), data.read_image):
        with pytest.raises(data.DataError, match="broken.png: cannot read image"):
            fn(bad)
        with pytest.raises(data.DataError, match="nothere.png: file not found"):
            fn(tmp_path / "nothere.png")


def test_grey_rgb_labels_read_as_convert_L(samples):
    path = samples / "LSUNcar/test/labels/1.png"  # RGB with R=G=B, 210x210
    assert Image.open(path).mode == "RGB"
    want = np.asarray(Image.open(path).convert("L").resize((256, 256), Image.NEAREST))
    np.testing.assert_array_equal(data.read_label(path, 5), want)


def test_colour_rgb_label_is_refused(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[3, 5] = (204, 0, 0)
    Image.fromarray(rgb, "RGB").save(tmp_path / "colour.png")
    with pytest.raises(data.LabelError, match=r"colour.png: colour label image \(pixel \(x=5, y=3\)"):
        data.read_label(tmp_path / "colour.png", 19)


def test_palette_labels(tmp_path):
    idx = (np.arange(64).reshape(8, 8) % 5).astype(np.uint8)
    # A colour palette (VOC style): the index is the class id; convert('L') would give luminances.
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 204, 0, 0, 76, 153, 0, 204, 204, 0, 51, 51, 255])
    img.save(tmp_path / "voc.png")
    assert Image.open(tmp_path / "voc.png").mode == "P"
    np.testing.assert_array_equal(data.read_label(tmp_path / "voc.png", 5, size=8), idx)
    # A grey palette: the grey value is the id, as convert('L') (the original) reads it.
    img = Image.fromarray(idx, "P")
    img.putpalette([v for g in (0, 2, 4, 6, 8) for v in (g, g, g)])
    img.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(data.read_label(tmp_path / "grey.png", 9, size=8), idx * 2)
    with pytest.raises(data.LabelError, match="grey.png: label value 6 .* largest value in the file 8"):
        data.read_label(tmp_path / "grey.png", 5, size=8)


def test_read_image_matches_golden_photos(golden, samples):
    # lpips_alex.npz holds four real photos read with PIL bilinear + ToTensor + Normalize(0.5, 0.5).
    import json

    meta = json.loads((golden / "lpips_alex.json").read_text())
    io = np.load(golden / "lpips_alex.npz")
    want = np.concatenate([io["x"], io["y"]]).transpose(0, 2, 3, 1)
    for rel, w in zip(meta["images"], want):
        img = data.read_image(samples / rel)
        assert img.dtype == np.float32 and img.shape == (256, 256, 3)
        np.testing.assert_array_equal(img, w)


def test_onehot():
    labels = np.array([[0, 2], [1, 2]], np.uint8)
    oh = data.onehot(labels, 3)
    assert oh.dtype == np.float32 and oh.shape == (2, 2, 3)
    np.testing.assert_array_equal(oh.argmax(-1), labels)
    np.testing.assert_array_equal(oh.sum(-1), 1)
    with pytest.raises(data.LabelError, match="3-class"):
        data.onehot(np.array([3]), 3)
    import jax.numpy as jnp

    np.testing.assert_array_equal(data.onehot(jnp.asarray(labels), 3), oh)


def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "10.png", "2.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()
    assert [p.name for p in data.list_images(tmp_path)] == ["10.png", "2.jpeg", "a.jpg", "b.PNG"]
    with pytest.raises(data.DataError, match="not a directory"):
        data.list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no image files"):
        data.list_images(tmp_path / "empty")


def test_paired_files_by_name(samples, tmp_path):
    pairs = data.paired_files(samples / f"{CELEBA}/train/images", samples / f"{CELEBA}/train/labels")
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("0.jpg", "0.png"), ("1.jpg", "1.png"), ("10.jpg", "10.png"), ("100.jpg", "100.png"), ("1000.jpg", "1000.png")]

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(b"")
    for name in ("a.png", "c.png", "z.png"):
        (labels / name).write_bytes(b"")
    # By sorted index, b.jpg would silently get c.png; by name it is an error naming both strays.
    with pytest.raises(data.DataError, match=r"images without a label in .*labels: b.jpg; labels without an image "
                                             r"in .*images: z.png"):
        data.paired_files(images, labels)
    (labels / "a.bmp").write_bytes(b"")
    with pytest.raises(data.DataError, match="two files share the name 'a'"):
        data.paired_files(images, labels)
