"""Header checks: formats, pixel limit, decompression bombs, garbage."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from common.images import ImageUnprocessable, NotAnImage, inspect_image
from tests.support.images import png_bytes, png_header_only


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("BMP", "image/bmp")],
)
def test_accepted_formats(fmt: str, content_type: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, fmt)
    buffer.seek(7)
    header = inspect_image(buffer, max_pixels=10_000)
    assert (header.content_type, header.width, header.height) == (content_type, 64, 48)
    assert buffer.tell() == 0


@pytest.mark.parametrize("data", [b"", b"hello world", b"%PDF-1.7\n" + b"0" * 100])
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        inspect_image(io.BytesIO(data), max_pixels=10_000)


def test_gif_is_refused_as_unsupported() -> None:
    buffer = io.BytesIO()
    Image.new("P", (8, 8)).save(buffer, "GIF")
    with pytest.raises(NotAnImage, match="GIF images are not supported"):
        inspect_image(buffer, max_pixels=10_000)


@pytest.mark.parametrize("fmt", ["GIF", "ICO", "PSD_HEADER"])
def test_refused_formats_never_reach_their_parser(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import GifImagePlugin, IcoImagePlugin, PsdImagePlugin

    plugins = {
        "GIF": GifImagePlugin.GifImageFile,
        "ICO": IcoImagePlugin.IcoImageFile,
        "PSD_HEADER": PsdImagePlugin.PsdImageFile,
    }

    def parser_reached(self: object) -> None:
        raise AssertionError(f"the {fmt} parser ran on an upload")

    monkeypatch.setattr(plugins[fmt], "_open", parser_reached)
    data = {
        "GIF": b"GIF89a\xff\xff\xff\xff" + b"\0" * 32,  # declares 65535x65535
        "ICO": b"\x00\x00\x01\x00\x01\x00" + b"\0" * 32,
        "PSD_HEADER": b"8BPS\x00\x01" + b"\0" * 32,
    }[fmt]
    with pytest.raises(NotAnImage, match="images are not supported"):
        inspect_image(io.BytesIO(data), max_pixels=10_000)


def test_pixel_limit() -> None:
    assert inspect_image(io.BytesIO(png_bytes(100, 100)), max_pixels=10_000).width == 100
    with pytest.raises(ImageUnprocessable, match="101x100 = 10100 pixels; the limit is 10000"):
        inspect_image(io.BytesIO(png_bytes(101, 100)), max_pixels=10_000)


@pytest.mark.parametrize("side", [20_000, 60_000])
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(ImageUnprocessable):
        inspect_image(io.BytesIO(png_header_only(side, side)), max_pixels=40_000_000)


@pytest.mark.parametrize(("orientation", "upright"), [(1, (40, 30)), (6, (30, 40)), (8, (30, 40))])
def test_the_upright_size_follows_the_exif_orientation(
    orientation: int, upright: tuple[int, int]
) -> None:
    """Prompts are in pixels of the picture as decoded (OpenCV turns JPEGs upright)."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (40, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    header = inspect_image(buffer, 10_000)
    assert (header.width, header.height) == (40, 30) and header.upright == upright
