"""Real-world files: broken, odd modes, rotated, huge and tiny."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tl.data import is_image_file, open_image, preprocess, to_rgb
from edge_tl.errors import DataError
from edge_tl.models import Preprocessing

PREP = Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear")


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --------------------------------------------------------------------------- broken files


def test_truncated_jpeg_is_refused(tmp_path: Path, make_truncated_jpeg) -> None:
    path = make_truncated_jpeg(tmp_path / "cut.jpg")
    with Image.open(path) as im:  # the header alone looks fine: only a full decode notices
        assert im.size == (64, 48)
    with pytest.raises(DataError, match="truncated"):
        open_image(path)


def test_truncated_progressive_jpeg_and_png_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "p.jpg", progressive=True, quality=90)
    Image.fromarray(array).save(tmp_path / "p.png")
    for name in ("p.jpg", "p.png"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match="truncated"):
            open_image(tmp_path / f"cut-{name}")


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        open_image(tmp_path / "empty.jpg")


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    with pytest.raises(DataError, match="not an image"):
        open_image(tmp_path / "notes.png")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        open_image(tmp_path / "absent.png")


def _png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny real PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb header)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    assert data[ihdr + 4 : ihdr + 8] == b"IHDR"
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _png_with_header_size(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(DataError, match="too large"):
        open_image(bomb)
    # Between Pillow's warning and error thresholds our own limit applies.
    big = _png_with_header_size(tmp_path / "big.png", 10_000, 10_000)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DataError, match="decompression-bomb guard"):
        open_image(big)


def test_pixel_limit_is_configurable(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "a.png", size=(40, 30))
    with pytest.raises(DataError, match="1200 pixels"):
        open_image(path, max_pixels=1000)
    assert open_image(path, max_pixels=1200).size == (40, 30)


# --------------------------------------------------------------------------- modes


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = pixels(open_image(tmp_path / "g.png"))
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 0  # transparent: the stored red must not show
    rgba[2:, :, 3] = 255
    rgba[3, 3] = (0, 0, 100, 128)  # half-transparent dark blue over white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = pixels(open_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[2, 0].tolist() == [200, 0, 0]
    assert out[3, 3].tolist() == pytest.approx([127, 127, 177], abs=1)


def test_gray_with_alpha_is_composited_over_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (10, 0))
    la.putpixel((1, 0), (10, 255))
    out = pixels(to_rgb(la))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 10, 10]


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((1, 1), 1)
    image.save(tmp_path / "p.png", transparency=0)
    image.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        out = pixels(open_image(tmp_path / name))
        assert out[0, 0].tolist() == [255, 255, 255], name  # index 0 is transparent
        assert out[1, 1].tolist() == [0, 0, 255], name


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 1)
    image.putpalette([0, 0, 0, 250, 20, 30] + [0] * (256 * 3 - 6))
    image.save(tmp_path / "p.png")
    assert pixels(open_image(tmp_path / "p.png"))[1, 1].tolist() == [250, 20, 30]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 24), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    out = pixels(open_image(tmp_path / "c.jpg")).astype(int)
    assert out[12, 16].tolist() == pytest.approx([0, 255, 255], abs=3)  # pure cyan


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 128 * 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    out = pixels(open_image(tmp_path / "g16.png"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_integer_and_float_modes() -> None:
    as_int = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert as_int.mode == "I"
    assert pixels(to_rgb(as_int))[0, :, 0].tolist() == [0, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert pixels(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    byte_range = Image.fromarray(np.array([[3.0, 300.0]], dtype=np.float32))
    assert pixels(to_rgb(byte_range))[0, :, 0].tolist() == [3, 255]


def test_bilevel_image(tmp_path: Path) -> None:
    Image.new("1", (5, 5), 1).save(tmp_path / "b.png")
    assert pixels(open_image(tmp_path / "b.png"))[2, 2].tolist() == [255, 255, 255]


# --------------------------------------------------------------------------- orientation


def _rotated_jpeg(path: Path, orientation: int) -> Path:
    """A 40x20 image, red block at the top-left, saved with an EXIF orientation tag."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:6, :6] = (255, 0, 0)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (40, 20), (2, 2)),  # upright: top-left
        (3, (40, 20), (17, 37)),  # rotated 180: bottom-right
        (6, (20, 40), (2, 17)),  # display rotated 90 clockwise: top-right
        (8, (20, 40), (37, 2)),  # display rotated 90 counter-clockwise: bottom-left
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    path = _rotated_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    image = open_image(path)
    assert image.size == size
    out = pixels(image).astype(int)
    r, c = red_at
    assert out[r, c].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert out[size[1] // 2, size[0] // 2].tolist() == pytest.approx([0, 0, 0], abs=12)


# --------------------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 6000x4000 photo-sized JPEG (smooth content, so it encodes quickly)."""
    x = np.arange(6000, dtype=np.int16)
    y = np.arange(4000, dtype=np.int16)[:, None]
    array = np.empty((4000, 6000, 3), dtype=np.uint8)
    array[..., 0] = (x.astype(np.int32) * 255 // 5999).astype(np.uint8)
    array[..., 1] = (y.astype(np.int32) * 255 // 3999).astype(np.uint8)
    array[..., 2] = ((x + y) // 40 % 256).astype(np.uint8)
    path = tmp_path_factory.mktemp("huge") / "photo.jpg"
    Image.fromarray(array).save(path, quality=90)
    return path


def test_huge_jpeg_is_drafted_and_preprocessed(huge_jpeg: Path) -> None:
    image = open_image(huge_jpeg)
    # DCT scaling: decoded at half size, still larger than any model input.
    assert image.size == (3000, 2000)
    x = preprocess(image, PREP)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # Drafting must not change what the model sees: compare with a full-resolution decode.
    with Image.open(huge_jpeg) as im:
        full = preprocess(im.convert("RGB"), PREP)
    assert np.abs(x - full).mean() < 0.02
    # Top-left of the centre crop is dark-red-ish, bottom-right bright: the layout survived.
    assert x[0, :, -1].mean() > x[0, :, 0].mean()
    assert x[1, -1, :].mean() > x[1, 0, :].mean()


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (51, 102, 204)).save(tmp_path / "one.png")
    x = preprocess(open_image(tmp_path / "one.png"), PREP)
    assert x.shape == (3, 32, 32)
    expected = (np.array([51, 102, 204]) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=1e-5)


def test_extreme_aspect_ratio(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "strip.png", size=(300, 2))
    x = preprocess(open_image(tmp_path / "strip.png"), PREP)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # the 2-pixel strip is stretched, not lost: its noise survives, inside the normalized range
    assert np.isfinite(x).all() and x.std() > 0.1 and -2.0 <= x.min() and x.max() <= 2.0


def test_image_file_recognition() -> None:
    assert is_image_file("a/B.JPG") and is_image_file("x.webp") and is_image_file("y.tiff")
    assert not is_image_file(".hidden.jpg")
    assert not is_image_file("notes.txt")
