"""Image files are read with their real bit depth, EXIF orientation and size limits.

Every test file is generated here (Pillow, numpy, tifffile, or a hand-written PNG
encoder for 48-bit RGB, which Pillow cannot write). Expected values are computed in
float64 from the stored integers; the loader returns float32, so comparisons allow
half a float32 ulp at 1.0 (6e-8) and nothing more.
"""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from captum_nave.images import ImageTooLargeError, load_image

F32_HALF_ULP = 6e-8  # float32 spacing near 1.0 is 1.19e-7


def _chw(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def _grey16(h: int = 12, w: int = 20) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    return a


def _write_png_rgb16(path, rgb16: np.ndarray) -> None:
    """Minimal PNG encoder for 16-bit RGB (colour type 2, bit depth 16, filter 0)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


# --------------------------------------------------------------------------- bit depth
@pytest.mark.parametrize("suffix", ["png", "tif", "pgm"])
def test_16bit_grey_is_scaled_by_its_bit_depth(tmp_path, suffix):
    a = _grey16()
    path = tmp_path / f"g16.{suffix}"
    Image.fromarray(a).save(path)
    x = load_image(path)
    assert x.dtype == torch.float32 and x.shape == (3, 12, 20)
    expected = np.repeat((a / 65535.0)[..., None], 3, axis=2)
    np.testing.assert_allclose(_chw(x), expected, rtol=0, atol=F32_HALF_ULP)


def test_16bit_big_endian_tiff(tmp_path):
    import tifffile

    a = _grey16()
    tifffile.imwrite(tmp_path / "be.tif", a, byteorder=">")
    assert Image.open(tmp_path / "be.tif").mode.startswith("I;16")
    np.testing.assert_allclose(_chw(load_image(tmp_path / "be.tif"))[..., 1], a / 65535.0, rtol=0, atol=F32_HALF_ULP)


def test_48bit_rgb_png_keeps_the_colours(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 65536, size=(9, 7, 3), dtype=np.uint16)
    _write_png_rgb16(tmp_path / "rgb16.png", rgb)
    x = _chw(load_image(tmp_path / "rgb16.png"))
    # Pillow keeps the high byte of each 16-bit sample: 8-bit precision of the true values
    np.testing.assert_allclose(x, (rgb >> 8) / 255.0, rtol=0, atol=F32_HALF_ULP)
    assert np.abs(x - rgb / 65535.0).max() <= 1 / 255


def test_float_tiff_in_unit_range_is_read_as_is(tmp_path):
    rng = np.random.default_rng(2)
    f = rng.random((10, 14)).astype(np.float32)
    f[0, 0], f[0, 1] = 0.0, 1.0
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    x = _chw(load_image(tmp_path / "f.tif"))
    np.testing.assert_array_equal(x, np.repeat(f[..., None].astype(np.float64), 3, axis=2))


@pytest.mark.parametrize(
    "values, match",
    [
        (np.linspace(0, 255, 140, dtype=np.float32).reshape(10, 14), r"mode 'F'.*\[0, 255\].*expected values in \[0, 1\]"),
        (np.full((10, 14), np.nan, dtype=np.float32), r"mode 'F'.*NaN"),
    ],
)
def test_float_tiff_outside_unit_range_is_refused(tmp_path, values, match):
    path = tmp_path / "wide.tif"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(ValueError, match=match) as info:
        load_image(path)
    assert "wide.tif" in str(info.value)


@pytest.mark.parametrize(
    "dtype, what", [(np.int32, "32-bit signed"), (np.uint32, "32-bit unsigned"), (np.int16, "16-bit signed")]
)
def test_integer_tiffs_without_a_known_range_are_refused(tmp_path, dtype, what):
    import tifffile

    path = tmp_path / "int.tif"
    tifffile.imwrite(path, np.arange(12 * 20, dtype=dtype).reshape(12, 20))
    with pytest.raises(ValueError, match=rf"int\.tif.*mode 'I'.*{what}"):
        load_image(path)


def test_what_pillow_cannot_decode_is_refused_naming_the_file(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "rgbf.tif", np.random.default_rng(0).random((8, 8, 3)).astype(np.float32),
                     photometric="rgb")
    with pytest.raises(ValueError, match=r"cannot read .*rgbf\.tif"):
        load_image(tmp_path / "rgbf.tif")


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "YCbCr", "LAB"])
def test_eight_bit_modes_match_pillows_rgb_conversion(tmp_path, mode):
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode not in ("LA", "PA") else rgb.convert(mode[0]).convert(mode)
    fmt = {"CMYK": "tif", "YCbCr": "tif", "LAB": "tif"}.get(mode, "png")
    path = tmp_path / f"m.{fmt}"
    try:
        img.save(path)
    except OSError:
        pytest.skip(f"Pillow cannot write mode {mode} as {fmt}")
    stored = Image.open(path)
    expected = np.asarray(stored.convert("RGBA").convert("RGB") if "A" in stored.mode or stored.mode == "P"
                          else stored.convert("RGB"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(_chw(load_image(path)), expected, rtol=0, atol=F32_HALF_ULP)


# --------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                               (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(arr).save(path, exif=exif)
    x = _chw(load_image(path))
    np.testing.assert_allclose(x, turn(arr) / 255.0, rtol=0, atol=F32_HALF_ULP)


def test_exif_orientation_of_a_16bit_image(tmp_path):
    a = _grey16(6, 10)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "o16.png", exif=exif)
    x = _chw(load_image(tmp_path / "o16.png"))[..., 0]
    np.testing.assert_allclose(x, np.rot90(a, -1) / 65535.0, rtol=0, atol=F32_HALF_ULP)


# --------------------------------------------------------------------------- size limits
def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 > 2 * 1000: Pillow refuses
    with pytest.raises(ImageTooLargeError, match=r"big\.png.*4096 pixels.*decompression-bomb limit") as info:
        load_image(tmp_path / "big.png")
    assert isinstance(info.value, ValueError)
    assert "PIL.Image.MAX_IMAGE_PIXELS" in str(info.value)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # over the limit, under twice it: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert load_image(tmp_path / "big.png").shape == (3, 64, 64)


def test_corloc_reader_uses_the_same_decoder_without_exif_rotation(tmp_path):
    from captum_nave.evaluation import load_image as load_uint8

    a = _grey16(6, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # boxes are annotated on the stored grid: no rotation here
    Image.fromarray(a).save(tmp_path / "g.png", exif=exif)
    out = load_uint8(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out[..., 2], np.rint(a / 65535.0 * 255.0).astype(np.uint8))
