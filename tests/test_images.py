"""Images as the stages read them (tasks.io.load_rgb): 8-bit RGB from any mode, high bit depths scaled."""
import numpy as np
from PIL import Image

from csr_core.prompts import PoolPrompt
from tasks.io import load_rgb, to_8bit
from tasks.prompts import check_image

SIXTEEN = np.array([[0, 256, 32768], [65535, 1000, 50000]], dtype=np.uint16)
EIGHT = [[0, 1, 128], [255, 4, 195]]  # round(v * 255 / 65535), by hand


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(SIXTEEN).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I;16B", "I;16L", "I")
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (3, 2)
    pixels = np.asarray(image)
    assert (pixels == np.array(EIGHT, dtype=np.uint8)[..., None]).all()  # grey: R = G = B; before, all but 0 were 255


def test_a_16_bit_png_passes_the_prompt_stage_image_check(tmp_path):
    Image.fromarray(SIXTEEN).save(tmp_path / "gray16.png")
    record = check_image(PoolPrompt("p", "gray16.png", "Describe."), str(tmp_path), 1)
    assert record["status"] == "ok" and len(record["image_sha256"]) == 64


def test_each_high_bit_depth_mode_uses_its_range():
    big_endian = Image.frombytes("I;16B", (3, 2), SIXTEEN.astype(">u2").tobytes())
    assert big_endian.mode == "I;16B" and np.asarray(to_8bit(big_endian)).tolist() == EIGHT
    as_int32 = Image.fromarray(SIXTEEN.astype(np.int32))  # how Pillow used to open 16-bit PNGs
    assert as_int32.mode == "I" and np.asarray(to_8bit(as_int32)).tolist() == EIGHT
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit_float.mode == "F" and np.asarray(to_8bit(unit_float)).tolist() == [[0, 128, 255]]
    # no range of their own: from the image's minimum to its maximum
    wide = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert np.asarray(to_8bit(wide)).tolist() == [[0, 128, 255]]
    flat = Image.fromarray(np.full((1, 2), 7.5, dtype=np.float32))
    assert np.asarray(to_8bit(flat)).tolist() == [[0, 0]]


def test_rgba_and_palette_images_load_as_rgb(tmp_path):
    Image.new("RGBA", (4, 4), (200, 10, 30, 128)).save(tmp_path / "rgba.png")
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 20, 140, 220] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as reopened:
        assert reopened.mode == "P"
    rgba, pal = load_rgb(tmp_path / "rgba.png"), load_rgb(tmp_path / "palette.png")
    assert rgba.mode == pal.mode == "RGB"
    assert rgba.getpixel((0, 0)) == (200, 10, 30) and pal.getpixel((3, 3)) == (20, 140, 220)
