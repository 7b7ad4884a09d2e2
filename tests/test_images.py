"""metaedge/images.py: decoding refuses images with nothing in them and scales 16-bit images instead of clipping."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from metaedge.errors import DataError
from metaedge.images import open_image, thumbnail


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def drawing() -> np.ndarray:
    """A black stroke on white, uint8 (32, 32)."""
    a = np.full((32, 32), 255, np.uint8)
    a[8:24, 15:17] = 0
    return a


@pytest.mark.parametrize(
    "image",
    [Image.new("L", (40, 40), 255), Image.new("RGB", (40, 40), (12, 200, 7)), Image.new("1", (40, 40)),
     Image.new("RGBA", (40, 40), (0, 0, 0, 0)), Image.new("LA", (40, 40), (0, 0)),
     Image.new("RGBA", (40, 40), (255, 255, 255, 255))],
    ids=["white", "flat-colour", "bilevel-black", "transparent-rgba", "transparent-la", "opaque-white"],
)  # fmt: skip
def test_images_with_nothing_in_them_are_refused(image):
    for given in (image, encoded(image)):
        with pytest.raises(DataError, match="(blank|fully transparent).*nothing to enroll or classify"):
            open_image(given, 3)


def test_jpeg_noise_on_a_blank_page_is_still_blank_but_a_faint_stroke_is_not():
    noisy = np.full((32, 32), 250, np.uint8) + (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8)
    with pytest.raises(DataError, match="blank"):
        open_image(noisy)
    faint = np.full((32, 32), 250, np.uint8)
    faint[10:20, 16] = 240
    assert open_image(faint).getextrema() == (240, 250)


def test_a_drawing_on_a_transparent_background_is_seen_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)  # transparent black everywhere...
    rgba[8:24, 15:17] = (0, 0, 0, 255)  # ...but an opaque black stroke
    seen = np.asarray(open_image(encoded(Image.fromarray(rgba, "RGBA"))).convert("L"))
    assert (seen == drawing()).all()


def test_sixteen_bit_png_is_scaled_not_clipped():
    sixteen = drawing().astype(np.uint16) * 257  # the same picture at 16 bits: 0 and 65535
    sixteen[0, 0] = 128 * 257  # one mid-grey pixel
    data = encoded(Image.fromarray(sixteen))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # Pillow reads it as a 16-bit mode
    seen = np.asarray(open_image(data))
    expected = drawing()
    expected[0, 0] = 128
    assert seen.dtype == np.uint8 and (seen == expected).all()
    assert (np.asarray(open_image(sixteen)) == expected).all()  # a uint16 array likewise


def test_thumbnail_is_a_small_jpeg():
    big = np.tile(drawing(), (8, 8))  # 256 x 256
    small = Image.open(io.BytesIO(thumbnail(big)))
    assert small.format == "JPEG" and max(small.size) == 96


def test_the_cli_refuses_a_blank_image_and_keeps_the_gallery(tmp_path):
    from typer.testing import CliRunner

    from metaedge.cli import app

    blank = tmp_path / "blank.png"
    blank.write_bytes(encoded(Image.new("L", (64, 64), 255)))
    result = CliRunner().invoke(app, ["enroll", "nothing", str(blank), "--store", str(tmp_path / "g.db")])
    assert result.exit_code == 1 and "blank.png: blank image" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "g.db").exists() or "nothing" not in CliRunner().invoke(
        app, ["gallery", "list", "--store", str(tmp_path / "g.db")]
    ).stdout
