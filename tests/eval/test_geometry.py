"""line_geometry against the geometry drawn into synthetic facades: known rotations, shears, warps and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from archdiff.eval.geometry import LineGeometry, line_geometry, mean_geometry
from archdiff.paths import bundled_datasets_dir

WHITE = (255, 255, 255)
ANGLE_TOLERANCE = 0.3  # degrees: LSD's sub-pixel fits of bicubic-rotated edges land well within this


def facade(size: int = 512) -> Image.Image:
    """A rendered elevation like datasets/facade-sketches: an outlined wall with a 4x4 grid of filled windows."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    s = size / 512
    draw.rectangle([96 * s, 64 * s, 416 * s, 448 * s], outline=0, width=max(1, round(3 * s)))
    for row in range(4):
        for col in range(4):
            x, y = 120 * s + col * 72 * s, 90 * s + row * 88 * s
            draw.rectangle([x, y, x + 44 * s, y + 60 * s], fill=90, outline=0, width=max(1, round(2 * s)))
    return image.convert("RGB")


def rotated(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=WHITE)


def sheared(image: Image.Image, degrees: float) -> Image.Image:
    """Verticals tilted by `degrees`, horizontals left exactly horizontal."""
    slope = math.tan(math.radians(degrees))
    centre = image.height / 2
    return image.transform(
        image.size, Image.Transform.AFFINE, (1, slope, -slope * centre, 0, 1, 0), Image.Resampling.BICUBIC, fillcolor=WHITE
    )


def warped(image: Image.Image, amplitude: float, period: float = 64) -> Image.Image:
    """Each pixel displaced sinusoidally (x by a wave in y, y by a wave in x): straight edges become wobbly."""
    array = np.asarray(image).astype(np.float64)
    height, width = array.shape[:2]
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    src_x = np.clip(np.rint(xs + amplitude * np.sin(2 * np.pi * ys / period)), 0, width - 1).astype(int)
    src_y = np.clip(np.rint(ys + amplitude * np.sin(2 * np.pi * xs / period)), 0, height - 1).astype(int)
    return Image.fromarray(array[src_y, src_x].astype(np.uint8))


def noise(seed: int, size: int = 512) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_an_upright_facade_is_straight_and_true():
    geometry = line_geometry(facade())
    assert geometry.straight_fraction > 0.95
    assert geometry.upright_fraction > 0.95
    assert geometry.vertical_error_deg < 0.1
    assert geometry.horizontal_error_deg < 0.1
    assert geometry.segments >= 4 * 16  # at least the four sides of every window


@pytest.mark.parametrize("degrees", [1.0, 3.0, 7.0, -5.0])
def test_rotation_by_k_degrees_gives_k_degrees_of_error(degrees):
    geometry = line_geometry(rotated(facade(), degrees))
    assert geometry.vertical_error_deg == pytest.approx(abs(degrees), abs=ANGLE_TOLERANCE)
    assert geometry.horizontal_error_deg == pytest.approx(abs(degrees), abs=ANGLE_TOLERANCE)
    assert geometry.upright_fraction == pytest.approx(1.0 if abs(degrees) < 2 else 0.0, abs=0.05)
    assert geometry.straight_fraction > 0.95  # a rotated line is still straight


def test_a_shear_tilts_the_verticals_only():
    geometry = line_geometry(sheared(facade(), 4.0))
    assert geometry.vertical_error_deg == pytest.approx(4.0, abs=ANGLE_TOLERANCE)
    assert geometry.horizontal_error_deg < 0.1
    horizontal = 2 * 320 + 16 * 2 * 44  # the drawn horizontal edges (wall and windows), px at 512
    vertical = 2 * 384 + 16 * 2 * 60
    assert geometry.upright_fraction == pytest.approx(horizontal / (horizontal + vertical), abs=0.05)


def test_errors_and_upright_fraction_are_weighted_by_length():
    image = Image.new("RGB", (512, 512), WHITE)
    draw = ImageDraw.Draw(image)
    draw.line((100, 56, 100, 456), fill=0, width=3)  # 400 px, exactly vertical
    top, length = (300, 156), 200  # 200 px, 10 degrees off vertical
    tip = (top[0] + length * math.sin(math.radians(10)), top[1] + length * math.cos(math.radians(10)))
    draw.line((*top, *tip), fill=0, width=3)
    geometry = line_geometry(image)
    assert geometry.vertical_error_deg == pytest.approx((400 * 0 + 200 * 10) / 600, abs=ANGLE_TOLERANCE)
    assert geometry.upright_fraction == pytest.approx(400 / 600, abs=0.05)
    assert geometry.horizontal_error_deg is None  # no near-horizontal segment: no number, rather than a perfect 0


@pytest.mark.parametrize("amplitude", [2, 4])
def test_a_warp_lowers_straight_fraction(amplitude):
    straight = line_geometry(facade()).straight_fraction
    wobbly = line_geometry(warped(facade(), amplitude)).straight_fraction
    assert wobbly < straight - 0.15  # measured: 1.0 clean, 0.72 at 2 px, 0.60 at 4 px


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_has_no_long_lines(seed):
    geometry = line_geometry(noise(seed))
    assert geometry.segments <= 1
    assert geometry.straight_fraction < 0.02


@pytest.mark.parametrize("image", [Image.new("RGB", (64, 48), WHITE), Image.new("L", (64, 48), 0), Image.new("RGBA", (32, 32))])
def test_an_image_without_lines_gives_zeros_and_none(image):
    assert line_geometry(image) == LineGeometry(0.0, 0.0, None, None, 0)


def test_every_number_is_finite_and_json_ready():
    for image in (facade(), rotated(facade(), 3), warped(facade(), 4), noise(0)):
        values = line_geometry(image).as_dict()
        assert set(values) == {"straight_fraction", "upright_fraction", "vertical_error_deg", "horizontal_error_deg", "segments"}
        assert all(value is None or math.isfinite(value) for value in values.values())
        assert 0.0 <= values["straight_fraction"] <= 1.0 and 0.0 <= values["upright_fraction"] <= 1.0


def test_deterministic():
    image = warped(rotated(facade(), 2), 3)
    assert line_geometry(image) == line_geometry(image.copy())


def test_a_real_facade_photo_rotated_by_5_degrees_is_5_degrees_off():
    photo = Image.open(bundled_datasets_dir() / "facades" / "facade_001.png").convert("RGB")
    upright = line_geometry(photo)
    tilted = line_geometry(rotated(photo, 5))
    assert upright.vertical_error_deg < 1.0 and upright.upright_fraction > 0.8
    assert tilted.vertical_error_deg == pytest.approx(5.0, abs=1.0)
    assert tilted.upright_fraction < 0.2


def test_mean_geometry_averages_fractions_over_all_images_and_errors_over_those_with_lines():
    upright, tilted, blank = (
        LineGeometry(1.0, 1.0, 0.0, 0.5, 10),
        LineGeometry(0.5, 0.0, 3.0, None, 4),
        LineGeometry(0.0, 0.0, None, None, 0),
    )
    assert mean_geometry([upright, tilted, blank]) == {
        "straight_fraction": pytest.approx(1.5 / 3),
        "upright_fraction": pytest.approx(1 / 3),
        "vertical_error_deg": pytest.approx(1.5),
        "horizontal_error_deg": pytest.approx(0.5),
    }
    assert mean_geometry([blank]) == {
        "straight_fraction": 0.0,
        "upright_fraction": 0.0,
        "vertical_error_deg": None,
        "horizontal_error_deg": None,
    }
    with pytest.raises(ValueError):
        mean_geometry([])
