"""Control maps for ControlNet (white structure on black) and how closely a generated image follows one.

`lines` (straight segments, the MLSD convention) and `canny` need OpenCV (the `controls` extra);
`drawing` (a sketch binarised and its strokes set to one width) and `none` use numpy and PIL only;
`depth` (grey, near white) runs a transformers depth-estimation model named by Hub id or folder.
Every extractor is deterministic, so a training cache keyed by the image's bytes stays valid.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import numpy as np
from PIL import Image

from archdiff.errors import UserError

CONTROL_TYPES = ("lines", "canny", "drawing", "none")  # "none": the image is already a control, used as given
DEPTH_TYPE = "depth"  # a neural control, from `extract_depth(image, model)`; not one of CONTROL_TYPES (no F1 for it)
MIN_SEGMENT_FRACTION = 0.02  # `lines` drops segments shorter than this fraction of the image's diagonal
STROKE_PIXELS = 512  # one px of stroke per this many px of the long side (1 px at 512, 2 px at 1024)
MIN_CONTRAST = 24  # a drawing whose grey levels span less than this is blank paper
PAPER_BLOCKS = 16  # `drawing` estimates the paper's brightness in blocks of 1/16 of the long side
FILL_FACTOR = 8  # `drawing`: ink up to this many stroke widths thick is a stroke (set to one width), thicker is a fill
EIGHT_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def stroke_width(size: tuple[int, int]) -> int:
    """Width of a control line for an image of this size, so maps shrunk to the training resolution look alike."""
    return max(1, round(max(size) / STROKE_PIXELS))


def match_tolerance(size: tuple[int, int]) -> int:
    """How far (px, Euclidean) a generated line may lie from the control's and still count in `control_f1`."""
    return 2 * stroke_width(size)


def check_control_request(control_type: str, canny_low: int = 100, canny_high: int = 200) -> None:
    """Refuse an unknown type, reversed or out-of-range canny thresholds, or a type whose OpenCV is missing,
    before any image is read."""
    if control_type not in CONTROL_TYPES:
        raise UserError(f"control type {control_type!r} is not known; choose one of {', '.join(CONTROL_TYPES)}")
    if not 0 <= canny_low <= canny_high <= 255:
        raise UserError(f"canny thresholds must satisfy 0 <= low <= high <= 255 (got low={canny_low}, high={canny_high})")
    if control_type in ("lines", "canny"):
        opencv()


def opencv():
    """OpenCV, imported late (it is optional and slow to import), or a UserError saying how to install it."""
    if importlib.util.find_spec("cv2") is None:
        raise UserError("'lines' and 'canny' control maps need OpenCV: pip install 'archdiff[controls]'")
    import cv2

    return cv2


def grey_array(image: Image.Image) -> np.ndarray:
    """uint8 luminance of any PIL mode; transparency becomes white paper (as in training)."""
    from archdiff.data.images import to_rgb

    return np.asarray(to_rgb(image).convert("L"), dtype=np.uint8)


def _to_rgb_map(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")


@cache
def _disk_offsets(diameter: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) of a disk `diameter` px across (a full square up to 3 px); even disks lean down and right."""
    low = -((diameter - 1) // 2)
    centre = (diameter - 1) / 2 + low  # 0 for odd diameters, 0.5 for even ones
    span = range(low, low + diameter)
    return tuple((dy, dx) for dy in span for dx in span if (dy - centre) ** 2 + (dx - centre) ** 2 <= (diameter / 2) ** 2)


@cache
def _radius_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) within Euclidean distance `radius` of a pixel."""
    span = range(-radius, radius + 1)
    return tuple((dy, dx) for dy in span for dx in span if dy * dy + dx * dx <= radius * radius)


def _dilate(mask: np.ndarray, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Binary dilation: the union of `mask` shifted by each offset (no scipy needed)."""
    height, width = mask.shape
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = np.pad(mask, reach)
    out = np.zeros_like(mask)
    for dy, dx in offsets:
        out |= padded[reach - dy : reach - dy + height, reach - dx : reach - dx + width]
    return out


def _otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: pixels <= the result form one class, the rest the other."""
    counts = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * levels)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return int(np.argmax(between))


def _flatten_paper(grey: np.ndarray) -> np.ndarray:
    """Dark-on-light grey divided by the paper's local brightness: shaded or yellowed scans become white paper.

    The paper is the brightest value in each block (lines are thinner than a block), smoothed by bilinear upsampling.
    """
    height, width = grey.shape
    block = max(8, max(height, width) // PAPER_BLOCKS)
    rows, cols = -(-height // block), -(-width // block)
    padded = np.pad(grey, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
    paper = padded.reshape(rows, block, cols, block).max(axis=(1, 3)).astype(np.uint8)
    paper = np.asarray(Image.fromarray(paper).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)
    flat = grey.astype(np.float64) / np.maximum(paper, 1.0) * 255.0
    return flat.round().clip(0, 255).astype(np.uint8)


def _square_pass(mask: np.ndarray, radius: int, erode: bool) -> np.ndarray:
    """Erosion (outside the image counts as ink: a fill may run off the sheet) or dilation by a (2r+1) square,
    as r separable 3-px passes."""
    for _ in range(radius):
        for axis in (0, 1):
            padded = np.pad(mask, [(1, 1) if a == axis else (0, 0) for a in (0, 1)], mode="edge" if erode else "constant")
            ahead, here, behind = (np.take(padded, range(i, i + mask.shape[axis]), axis=axis) for i in (0, 1, 2))
            mask = (ahead & here & behind) if erode else (ahead | here | behind)
    return mask


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return _square_pass(mask, radius, erode=True)


def _fills(strokes: np.ndarray, radius: int) -> np.ndarray:
    """Ink too thick to be a stroke (it holds a (2r+1) square): solid walls, poché, shadows. Drawn as outlines,
    since their skeleton would be a meaningless medial axis, and thinning them would take one pass per px."""
    core = _erode(strokes, radius)
    return _square_pass(core, radius, erode=False) & strokes if core.any() else core


def _deletable(p: np.ndarray, step: int) -> np.ndarray:
    """Zhang-Suen's test for the inner pixels of `p` (a bool window with a 1-px margin) in sub-iteration `step`."""
    # neighbours P2..P9, clockwise from north
    n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
    count = np.zeros(n[0].shape, np.uint8)
    transitions = np.zeros(n[0].shape, np.uint8)
    for i in range(8):
        count += n[i]
        transitions += ~n[i] & n[(i + 1) % 8]
    if step == 0:
        side = ~(n[0] & n[2] & n[4]) & ~(n[2] & n[4] & n[6])
    else:
        side = ~(n[0] & n[2] & n[6]) & ~(n[0] & n[4] & n[6])
    return p[1:-1, 1:-1] & (count >= 2) & (count <= 6) & (transitions == 1) & side


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning to a 1-px skeleton, one pass per px of the thickest stroke.

    Each sub-iteration looks only at the box around what the previous two changed: nothing else can change.
    """
    skeleton = np.pad(mask, 1)
    height, width = skeleton.shape
    boxes = [(1, height - 1, 1, width - 1)] * 2  # rows and columns (inner pixels) the last two sub-iterations changed
    step = 0
    while any(box is not None for box in boxes):
        live = [box for box in boxes if box is not None]
        top = max(1, min(b[0] for b in live) - 1)
        bottom = min(height - 1, max(b[1] for b in live) + 1)
        left = max(1, min(b[2] for b in live) - 1)
        right = min(width - 1, max(b[3] for b in live) + 1)
        remove = _deletable(skeleton[top - 1 : bottom + 1, left - 1 : right + 1], step)
        rows, cols = np.nonzero(remove.any(axis=1))[0], np.nonzero(remove.any(axis=0))[0]
        if len(rows):
            skeleton[top:bottom, left:right][remove] = False
            boxes = [boxes[1], (top + rows[0], top + rows[-1] + 1, left + cols[0], left + cols[-1] + 1)]
        else:
            boxes = [boxes[1], None]
        step = 1 - step
    return skeleton[1:-1, 1:-1]


def _drawing(image: Image.Image) -> np.ndarray:
    """A sketch's strokes as a mask, each stroke the same width whatever pen drew it.

    Polarity comes from the majority: the paper is whichever side of Otsu's threshold holds most pixels,
    so a white-on-black sketch is not inverted into a white sheet.
    """
    grey = grey_array(image)
    if int(grey.max()) - int(grey.min()) < MIN_CONTRAST:
        return np.zeros(grey.shape, dtype=bool)  # blank paper
    if (grey > _otsu(grey)).mean() < 0.5:
        grey = 255 - grey  # light strokes on dark paper: work on dark-on-light
    flat = _flatten_paper(grey)
    strokes = flat <= _otsu(flat)
    if strokes.mean() > 0.5:  # flattening left no paper to speak of (a blank, noisy sheet)
        return np.zeros(grey.shape, dtype=bool)
    width = stroke_width(grey.shape[::-1])
    fills = _fills(strokes, FILL_FACTOR * width // 2)
    skeleton = _thin(strokes & ~fills) | (fills & ~_erode(fills, 1))
    skeleton &= _dilate(skeleton, EIGHT_NEIGHBOURS)  # lone pixels are specks of scanner noise, not strokes
    return _dilate(skeleton, _disk_offsets(width))


def line_segments(grey: np.ndarray, min_fraction: float) -> np.ndarray:
    """(N, 4) float64 x1, y1, x2, y2 of OpenCV's LSD segments at least `min_fraction` of the image's diagonal long."""
    found = opencv().createLineSegmentDetector().detect(grey)[0]
    if found is None:
        return np.zeros((0, 4))
    segments = found.reshape(-1, 4).astype(np.float64)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    return segments[lengths >= min_fraction * float(np.hypot(*grey.shape))]


def _lines(image: Image.Image) -> np.ndarray:
    """Straight segments found by OpenCV's LSD, short ones dropped, drawn as white strokes."""
    cv2 = opencv()
    grey = grey_array(image)
    height, width = grey.shape
    canvas = np.zeros((height, width), dtype=np.uint8)
    for x1, y1, x2, y2 in line_segments(grey, MIN_SEGMENT_FRACTION).tolist():
        cv2.line(canvas, (round(x1), round(y1)), (round(x2), round(y2)), 255, 1, cv2.LINE_8)
    # widened here rather than by cv2's thickness, which draws 3 px for 2: the same strokes as `drawing`
    return _dilate(canvas > 0, _disk_offsets(stroke_width((width, height))))


def _canny(image: Image.Image, low: int, high: int) -> np.ndarray:
    return opencv().Canny(grey_array(image), low, high) > 0


def _structure(image: Image.Image, control_type: str, low: int, high: int) -> np.ndarray:
    if control_type == "lines":
        return _lines(image)
    if control_type == "canny":
        return _canny(image, low, high)
    return _drawing(image)


def extract_control(image: Image.Image, control_type: str, *, canny_low: int = 100, canny_high: int = 200) -> Image.Image:
    """A control map of the same size as `image`: RGB, white (255) structure on black (0); "none" returns the image as RGB."""
    check_control_request(control_type, canny_low, canny_high)
    if control_type == "none":
        from archdiff.data.images import to_rgb

        return to_rgb(image).copy()
    return _to_rgb_map(_structure(image, control_type, canny_low, canny_high))


def _f1(reference: np.ndarray, found: np.ndarray, tolerance: int) -> float:
    """F1 of two masks where a pixel counts as matched if the other mask has one within `tolerance` px."""
    if not reference.any() and not found.any():
        return 1.0  # nothing to follow, and nothing drawn
    if not reference.any() or not found.any():
        return 0.0
    offsets = _radius_offsets(tolerance)
    precision = float((found & _dilate(reference, offsets)).sum() / found.sum())
    recall = float((reference & _dilate(found, offsets)).sum() / reference.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def control_f1(
    control: Image.Image, generated: Image.Image, control_type: str, *, canny_low: int = 100, canny_high: int = 200
) -> float:
    """Control adherence in [0, 1]: F1 between the control's white pixels and the same extractor run on `generated`.

    A pixel within `match_tolerance` px of one in the other map counts as matched (a line 1-2 px off still
    counts). For "none" the control is taken as given and `generated` goes through "canny". A generated image
    of another size is first resized to the control's.
    """
    check_control_request("canny" if control_type == "none" else control_type, canny_low, canny_high)
    reference = grey_array(control) > 127
    if generated.size != control.size:
        from archdiff.data.images import to_rgb

        generated = to_rgb(generated).resize(control.size, Image.Resampling.LANCZOS)
    found = _structure(generated, "canny" if control_type == "none" else control_type, canny_low, canny_high)
    return _f1(reference, found, match_tolerance(control.size))


@cache
def _depth_estimator(model: str):
    """(processor, network, device) of a transformers depth-estimation model, loaded once per process.

    PIL preprocessing: the maps then do not change with torchvision installed or not (it is kept out here).
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    from transformers.utils import logging as transformers_logging

    from archdiff.errors import first_line

    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would sit above archdiff's own
    try:
        processor = AutoImageProcessor.from_pretrained(model, backend="pil")
        network = AutoModelForDepthEstimation.from_pretrained(model).eval()
    except Exception as error:  # noqa: BLE001 - a missing folder, no Hub, not a depth model: the same fix for the user
        raise UserError(
            f"depth model '{model}' could not be loaded ({first_line(error)}); give the Hub id or local folder of a "
            "transformers depth-estimation model, e.g. Intel/dpt-hybrid-midas"
        ) from None
    finally:
        transformers_logging.enable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return processor, network.to(device), device


def check_depth_model(model: str) -> None:
    """Load the depth model now (it stays loaded), so a bad --depth-model fails before any image is read."""
    _depth_estimator(model)


def extract_depth(image: Image.Image, model: str) -> Image.Image:
    """A depth map the size of `image`: RGB grey, near white and far black (the MiDaS convention of ControlNet's
    depth models), stretched to 0..255. Relative models predict near as large already; metric ones are inverted."""
    import torch

    from archdiff.data.images import to_rgb

    processor, network, device = _depth_estimator(model)
    rgb = to_rgb(image)
    inputs = processor(images=rgb, return_tensors="pt").to(device)
    with torch.inference_mode():
        outputs = network(**inputs)
    depth = processor.post_process_depth_estimation(outputs, target_sizes=[(rgb.height, rgb.width)])[0]["predicted_depth"]
    values = depth.float().cpu().numpy().astype(np.float64)
    if getattr(network.config, "depth_estimation_type", "relative") == "metric":
        values = -values
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.round().clip(0, 255).astype(np.uint8)).convert("RGB")
