import io

import numpy as np
import pytest
from PIL import Image

from ensemble.images import BadImageError, decode_all, decode_image


def save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


@pytest.fixture
def rgb():
    arr = np.zeros((30, 60, 3), dtype=np.uint8)
    arr[:, :30] = (250, 0, 0)  # left half red, right half black
    return arr


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "I;16", "P"])
def test_modes_decode_to_rgb(tmp_path, rgb, mode):
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257))
        assert img.mode.startswith("I;16")
        path = save(img, tmp_path / "x.png")
    elif mode == "CMYK":
        path = save(img.convert("CMYK"), tmp_path / "x.jpg")
    else:
        path = save(img.convert(mode), tmp_path / "x.png")
    arr = decode_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (30, 60, 3)
    assert arr[:, :30].mean() > arr[:, 30:].mean()  # content survives the conversion


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    arr = decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    assert (arr == 255).all()
    p = Image.new("P", (8, 8), 0)
    p.info["transparency"] = 0
    assert (decode_image(save(p, tmp_path / "p.png", transparency=0)) == 255).all()


def test_exif_orientation_is_applied(tmp_path, rgb):
    upright = Image.fromarray(rgb)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored rotated ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with a tag saying "rotate 90 clockwise to view"
    path = save(stored, tmp_path / "r.jpg", exif=exif, quality=95)
    arr = decode_image(path)
    assert arr.shape == (30, 60, 3)
    assert arr[:, :30, 0].mean() > 200 and arr[:, 30:, 0].mean() < 30  # red stays on the left


def test_shorter_side_resize(tmp_path, rgb):
    arr = decode_image(save(Image.fromarray(rgb), tmp_path / "a.png"), size=15)
    assert arr.shape == (15, 30, 3)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_bad_files_raise_naming_the_file(tmp_path, rgb, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg"):
        decode_image(str(path))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="big.png"):
        decode_image(path)


def test_skip_policy_lists_bad_files_and_substitutes_nothing(tmp_path, rgb):
    good = save(Image.fromarray(rgb), tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    arrays, skipped = decode_all([good, str(bad), good], None, on_bad="skip", n_threads=1)
    assert arrays[1] is None and arrays[0] is not None and arrays[2] is not None
    assert [p for p, _ in skipped] == [str(bad)]
    with pytest.raises(BadImageError):
        decode_all([good, str(bad)], None, on_bad="error")


def test_exif_rotated_photo_decodes_like_the_upright_one(tmp_path):
    rng = np.random.default_rng(0)
    upright = np.kron(rng.integers(0, 255, (6, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48 x 80
    up_path = save(Image.fromarray(upright), tmp_path / "up.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 counter-clockwise to view": stored turned the other way
    rot_path = save(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_270), tmp_path / "rot.png", exif=exif)
    a, b = decode_image(up_path, 24), decode_image(rot_path, 24)
    assert a.shape == b.shape == (24, 40, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
