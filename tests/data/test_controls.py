"""Control maps checked against the geometry drawn into synthetic images, and control_f1 against a hand count."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from archdiff.data.controls import CONTROL_TYPES, control_f1, extract_control, match_tolerance, stroke_width
from archdiff.errors import UserError
from archdiff.paths import bundled_datasets_dir

EXTRACTORS = ("lines", "canny", "drawing")


def white(control: Image.Image) -> np.ndarray:
    """The control's structure pixels, after checking it is a pure black-and-white RGB map."""
    array = np.asarray(control)
    assert control.mode == "RGB"
    assert set(np.unique(array)) <= {0, 255}
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    return array[..., 0] == 255


def distance_to(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest of `points` ((y, x) rows), by brute force."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    best = np.full(shape, np.inf)
    for y, x in points:
        best = np.minimum(best, np.hypot(ys - y, xs - x))
    return best


def segment_points(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    steps = int(max(abs(x2 - x1), abs(y2 - y1))) * 2 + 1
    t = np.linspace(0.0, 1.0, steps)
    return np.stack([y1 + t * (y2 - y1), x1 + t * (x2 - x1)], axis=1)


def sketch(size=(256, 192), width=1, ink=0, paper=255, segments=((40, 40, 216, 40), (40, 40, 40, 150), (90, 160, 216, 100))):
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    for segment in segments:
        draw.line(segment, fill=ink, width=width)
    return image.convert("RGB"), np.concatenate([segment_points(*s) for s in segments])


def facade(name: str = "facade_000.png") -> Image.Image:
    return Image.open(bundled_datasets_dir() / "facades" / name).convert("RGB")


@pytest.mark.parametrize("control_type", EXTRACTORS)
def test_maps_follow_the_drawn_lines(control_type):
    image, points = sketch(width=3)
    distance = distance_to(points, (image.height, image.width))
    found = white(extract_control(image, control_type))
    assert found.shape == (image.height, image.width)
    assert found.any()
    assert distance[found].max() <= 3.5  # nothing far from a drawn line (a 3-px line's edges lie 1.5 px off its axis)
    on_line = distance <= 0.5
    near = np.zeros_like(found)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near |= np.roll(found, (dy, dx), axis=(0, 1))
    assert near[on_line].mean() > 0.97  # and every drawn line found


def test_lines_drops_short_segments():
    image = Image.new("L", (640, 480), 255)
    draw = ImageDraw.Draw(image)
    draw.line((20, 300, 620, 300), fill=0, width=2)
    draw.line((100, 100, 112, 100), fill=0, width=3)  # a 12-px dash (LSD finds it) under 2 % of the 800-px diagonal
    found = white(extract_control(image, "lines"))
    assert not found[80:120, 80:130].any()
    assert found[295:306, 30:610].any(axis=0).all()


def test_canny_edges_lie_on_a_filled_rectangle_boundary():
    image = Image.new("L", (128, 96), 50)
    ImageDraw.Draw(image).rectangle((30, 20, 89, 69), fill=200)
    found = white(extract_control(image, "canny", canny_low=50, canny_high=150))
    ys, xs = np.nonzero(found)
    near_side = np.minimum(np.abs(xs - 29.5), np.abs(xs - 89.5)) <= 1
    near_top_or_bottom = np.minimum(np.abs(ys - 19.5), np.abs(ys - 69.5)) <= 1
    on_boundary = near_side | near_top_or_bottom
    inside = (xs >= 29) & (xs <= 90) & (ys >= 19) & (ys <= 70)
    assert (on_boundary & inside).all()
    assert found[45, 28:32].any() and found[45, 88:92].any() and found[18:22, 60].any() and found[68:72, 60].any()


@pytest.mark.parametrize("size,expected", [((512, 384), 1), ((1024, 768), 2), ((1536, 1024), 3)])
def test_drawing_sets_every_stroke_to_the_width_for_its_size(size, expected):
    assert stroke_width(size) == expected
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    rows = (size[1] // 4, size[1] // 2)
    draw.line((40, rows[0], size[0] - 40, rows[0]), fill=0, width=1)
    draw.line((40, rows[1], size[0] - 40, rows[1]), fill=0, width=6 * expected)
    found = white(extract_control(image, "drawing"))
    for column in (size[0] // 3, size[0] // 2, 2 * size[0] // 3):
        runs = np.nonzero(found[:, column])[0]
        assert len(runs) == 2 * expected, (column, runs)
        assert runs[:expected].tolist() == list(range(runs[0], runs[0] + expected))
        assert abs(runs[0] - rows[0]) <= expected and abs(runs[expected] - rows[1]) <= 3 * expected


def test_drawing_outlines_fills_too_thick_to_be_strokes():
    image = Image.new("L", (512, 384), 255)
    draw = ImageDraw.Draw(image)
    draw.rectangle((100, 100, 299, 249), fill=0)  # a solid wall, 150 px thick
    draw.line((20, 320, 490, 320), fill=0, width=7)  # a marker stroke, under 8 stroke widths
    found = white(extract_control(image, "drawing"))
    assert found[100, 120:280].all() and found[249, 120:280].all() and found[120:230, 100].all() and found[120:230, 299].all()
    assert not found[102:248, 102:298].any()  # the inside stays black: an outline, not a medial axis
    assert found[:, 250].nonzero()[0].tolist() == [100, 249, 320]  # the stroke is one centre line


def test_drawing_binarises_grey_pencil_on_shaded_noisy_paper():
    rng = np.random.default_rng(0)
    width, height = 320, 240
    shade = np.linspace(250, 150, width)[None, :].repeat(height, axis=0)  # a scan darkening to the right
    lines, points = sketch((width, height), width=2)
    pencil = np.where(np.asarray(lines.convert("L")) < 128, 0.6, 1.0)  # graphite: 40 % darker than its paper
    grey = (shade * pencil + rng.normal(0, 4, (height, width))).clip(0, 255).astype(np.uint8)
    found = white(extract_control(Image.fromarray(grey), "drawing"))
    distance = distance_to(points, (height, width))
    assert distance[found].max() <= 2.5  # no paper, shade or grain turned into strokes
    assert found[distance <= 0.5].mean() > 0.9


def test_drawing_keeps_a_white_on_black_sketch_as_it_is():
    dark, points = sketch(width=2, ink=235, paper=20)
    light, _ = sketch(width=2)
    found = white(extract_control(dark, "drawing"))
    assert found.mean() < 0.05  # not inverted into a white sheet
    assert np.array_equal(found, white(extract_control(light, "drawing")))


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "I;16"])
def test_drawing_reads_any_mode(mode):
    image, _ = sketch(width=2)
    expected = white(extract_control(image, "drawing"))
    if mode == "RGBA":  # a transparent sheet: ink opaque, paper clear black
        alpha = Image.fromarray(255 - np.asarray(image.convert("L")))
        converted = Image.merge("RGBA", (*Image.new("RGB", image.size, 0).split(), alpha))
    elif mode == "I;16":
        converted = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    else:
        converted = image.convert(mode)
    assert np.array_equal(white(extract_control(converted, "drawing")), expected)


def test_drawing_never_mirrors_and_blank_paper_stays_black():
    image = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(image).line((10, 10, 10, 90, 60, 90), fill=0, width=2)  # an L in the left third
    found = white(extract_control(image, "drawing"))
    assert found[:, :70].any() and not found[:, 70:].any()
    assert not white(extract_control(Image.new("RGB", (64, 64), (240, 236, 220)), "drawing")).any()


@pytest.mark.parametrize("control_type", EXTRACTORS)
def test_extraction_is_deterministic(control_type):
    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    assert png(extract_control(facade(), control_type)) == png(extract_control(facade(), control_type))


def test_none_is_the_image_as_given():
    image = facade()
    control = extract_control(image.convert("L"), "none")
    assert control.mode == "RGB" and np.array_equal(np.asarray(control)[..., 0], np.asarray(image.convert("L")))


@pytest.mark.parametrize("control_type", EXTRACTORS)
def test_f1_is_one_for_the_image_itself_high_when_shifted_low_when_unrelated(control_type):
    image = facade()
    control = extract_control(image, control_type)
    assert control_f1(control, image, control_type) == 1.0
    shifted = Image.fromarray(np.roll(np.asarray(image), 1, axis=1))
    assert control_f1(control, shifted, control_type) > 0.9
    stripes = Image.new("RGB", image.size, "white")
    for x in range(8, image.width, 16):  # vertical stripes where the sketch below has none
        ImageDraw.Draw(stripes).line((x, 0, x, image.height), fill="black", width=3)
    other, _ = sketch(size=image.size, width=2, segments=((0, 128, 255, 128),))
    assert control_f1(extract_control(other, control_type), stripes, control_type) < 0.1


def test_f1_of_none_compares_the_given_map_through_canny():
    image = facade()
    edges = extract_control(image, "canny")
    assert control_f1(edges, image, "none") == 1.0
    assert control_f1(edges, image.resize((512, 512)), "none") > 0.9  # another size is brought to the control's


def test_f1_matches_a_hand_count():
    assert match_tolerance((32, 32)) == 2
    control = np.zeros((32, 32), np.uint8)
    control[4, 0:16] = control[20, 0:16] = 255  # 32 control pixels
    generated = np.full((32, 32), 255, np.uint8)
    generated[5, 0:16] = 0  # 16 px, each 1 px from the first control line: matched both ways
    generated[10:20, 28] = 0  # 10 px, 13+ px from any control pixel
    # precision 16/26, recall 16/32
    expected = 2 * (16 / 26) * (16 / 32) / (16 / 26 + 16 / 32)
    result = control_f1(Image.fromarray(control).convert("RGB"), Image.fromarray(generated).convert("RGB"), "drawing")
    assert result == pytest.approx(expected)
    nothing = Image.new("RGB", (32, 32))
    assert control_f1(nothing, Image.new("RGB", (32, 32), "white"), "drawing") == 1.0  # nothing asked, none drawn


def test_bad_requests_are_user_errors(monkeypatch):
    image, _ = sketch()
    with pytest.raises(UserError, match="lines, canny, drawing, none"):
        extract_control(image, "depthmap")
    with pytest.raises(UserError, match="low <= high"):
        extract_control(image, "canny", canny_low=200, canny_high=100)
    with pytest.raises(UserError, match="low <= high"):
        control_f1(image, image, "canny", canny_low=-1)
    assert CONTROL_TYPES == ("lines", "canny", "drawing", "none")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real_find_spec(name, *a))
    for control_type in ("lines", "canny"):
        with pytest.raises(UserError, match=r"pip install 'archdiff\[controls\]'"):
            extract_control(image, control_type)
    assert white(extract_control(image, "drawing")).any()  # drawings need no OpenCV


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory) -> dict[str, str]:
    """A random 4-layer DPT at 64 px, saved as a relative model and again as a "metric" one (same weights)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    root = tmp_path_factory.mktemp("depth")
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=64,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    import torch

    torch.manual_seed(0)
    model = DPTForDepthEstimation(config).eval()
    processor = DPTImageProcessorPil(size={"height": 64, "width": 64})
    folders = {}
    for kind in ("relative", "metric"):
        model.config.depth_estimation_type = kind
        model.save_pretrained(root / kind)
        processor.save_pretrained(root / kind)
        folders[kind] = str(root / kind)
    return folders


def test_depth_is_the_models_prediction_at_the_image_size_near_white(tiny_depth):
    import torch
    from transformers import DPTForDepthEstimation, DPTImageProcessorPil

    from archdiff.data.controls import extract_depth

    image = facade().resize((96, 80))
    depth = extract_depth(image, tiny_depth["relative"])
    array = np.asarray(depth)
    assert depth.mode == "RGB" and depth.size == (96, 80)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array.min() == 0 and array.max() == 255
    # independently: the processor's own steps, the model, a bicubic resize and a 0..255 stretch
    processor = DPTImageProcessorPil.from_pretrained(tiny_depth["relative"])
    model = DPTForDepthEstimation.from_pretrained(tiny_depth["relative"]).eval()
    with torch.no_grad():
        predicted = model(**processor(images=image, return_tensors="pt")).predicted_depth
    resized = torch.nn.functional.interpolate(predicted[:, None], size=(80, 96), mode="bicubic", align_corners=False)[0, 0]
    expected = ((resized - resized.min()) / (resized.max() - resized.min()) * 255).numpy()
    assert np.abs(array[..., 0].astype(float) - expected).max() <= 1.0
    assert np.array_equal(np.asarray(extract_depth(image, tiny_depth["relative"])), array)  # deterministic
    metric = np.asarray(extract_depth(image, tiny_depth["metric"]))[..., 0].astype(int)
    assert np.abs(metric - (255 - array[..., 0].astype(int))).max() <= 1  # a metric model's far is large: inverted


def test_a_missing_depth_model_is_a_user_error(tmp_path):
    from archdiff.data.controls import check_depth_model

    with pytest.raises(UserError, match="depth model .* could not be loaded"):
        check_depth_model(str(tmp_path / "no-model"))
