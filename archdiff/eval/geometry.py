"""Architecture geometry of one image: do its long lines run straight, and are its verticals and horizontals true?

Meant for photos and elevations (drawings have `check-vae`'s line survival instead). Segments come from OpenCV's
LSD, as for the `lines` control maps, but "long" is stricter here (`LONG_SEGMENT_FRACTION` of the diagonal): a wobbly
edge still yields segments of a few percent of the diagonal, which must not count as straight.
Deterministic: the same image always gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from archdiff.data.controls import grey_array, line_segments, match_tolerance, opencv

LONG_SEGMENT_FRACTION = 0.04  # at 2% a sinusoidally warped facade kept 94% of its straight_fraction, at 4% 17-67%
NEAR_AXIS_DEG = 20.0  # a segment within this of vertical (horizontal) counts as meant to be vertical (horizontal)
UPRIGHT_DEG = 2.0  # a segment within this of either axis counts as upright
CANNY_LOW, CANNY_HIGH = 100, 200  # the edges that long segments should explain (the `canny` control's defaults)


@dataclass(frozen=True)
class LineGeometry:
    """Line geometry of one image; every number is finite.

    straight_fraction: share of the Canny edge pixels lying within `match_tolerance` px of a long straight
        segment, in [0, 1]. Straight facade edges score high; wobbly (warped) edges split into short segments and
        score lower; texture and noise, whose edges no long segment explains, score near 0. 0.0 without edges.
    upright_fraction: share of the long segments' length within `UPRIGHT_DEG` of vertical or horizontal, in [0, 1];
        0.0 without long segments.
    vertical_error_deg / horizontal_error_deg: length-weighted mean absolute deviation (degrees) from exact
        vertical / horizontal of the long segments within `NEAR_AXIS_DEG` of it: about k for an image rotated by
        k degrees, about 0 for an upright one. None when there is no such segment (0 would read as perfect).
    segments: how many long segments were found.
    """

    straight_fraction: float
    upright_fraction: float
    vertical_error_deg: float | None
    horizontal_error_deg: float | None
    segments: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    return float((values * weights).sum() / weights.sum()) if weights.sum() > 0 else None


def _straight_fraction(grey: np.ndarray, segments: np.ndarray) -> float:
    """Share of Canny edge pixels within `match_tolerance` px of a long segment (both sides of a stroke count)."""
    cv2 = opencv()
    edges = cv2.Canny(grey, CANNY_LOW, CANNY_HIGH) > 0
    if not edges.any() or not len(segments):
        return 0.0
    canvas = np.zeros(grey.shape, dtype=np.uint8)
    for x1, y1, x2, y2 in segments.tolist():
        cv2.line(canvas, (round(x1), round(y1)), (round(x2), round(y2)), 255, 1, cv2.LINE_8)
    radius = match_tolerance(grey.shape[::-1])
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    covered = cv2.dilate(canvas, disk) > 0
    return float((edges & covered).sum() / edges.sum())


def line_geometry(image: Image.Image) -> LineGeometry:
    """Straightness and uprightness of the image's long lines (see `LineGeometry` for each number's meaning)."""
    grey = grey_array(image)
    segments = line_segments(grey, LONG_SEGMENT_FRACTION)
    dx, dy = segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1]
    lengths = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(dy, dx)) % 180.0  # undirected: 0 horizontal, 90 vertical
    off_horizontal = np.minimum(angle, 180.0 - angle)
    off_vertical = np.abs(angle - 90.0)
    near_vertical, near_horizontal = off_vertical <= NEAR_AXIS_DEG, off_horizontal <= NEAR_AXIS_DEG
    upright = np.minimum(off_vertical, off_horizontal) <= UPRIGHT_DEG
    return LineGeometry(
        straight_fraction=_straight_fraction(grey, segments),
        upright_fraction=float(lengths[upright].sum() / lengths.sum()) if len(segments) else 0.0,
        vertical_error_deg=_weighted_mean(off_vertical[near_vertical], lengths[near_vertical]),
        horizontal_error_deg=_weighted_mean(off_horizontal[near_horizontal], lengths[near_horizontal]),
        segments=len(segments),
    )


def mean_geometry(results: Sequence[LineGeometry]) -> dict[str, float | None]:
    """One row of a report from many images: fractions averaged over all of them (an image without lines counts as
    0, it is not straight), each error over the images that have such segments (None if none has: random tiny models
    draw noise, which has no lines)."""
    if not results:
        raise ValueError("mean_geometry needs at least one image's LineGeometry")

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "straight_fraction": mean([r.straight_fraction for r in results]),
        "upright_fraction": mean([r.upright_fraction for r in results]),
        "vertical_error_deg": mean([r.vertical_error_deg for r in results if r.vertical_error_deg is not None]),
        "horizontal_error_deg": mean([r.horizontal_error_deg for r in results if r.horizontal_error_deg is not None]),
    }
