"""One row of scores from a set of images: what `archdiff eval` reports per checkpoint and `validation.metrics` logs.

Images come in groups (one caption drawn at several seeds): CLIP score pairs each image with its prompt, diversity
compares the images of a group, FD/KID compare them all with the real reference images. Images are read lazily
(`Iterable`), features computed in batches; only the features (a few KB per image) are held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from archdiff.errors import UserError

# Which way is better, for picking the best checkpoint and marking it in the report.
HIGHER_IS_BETTER = {
    "clip_score": True,
    "fd_dino": False,
    "kid_dino": False,
    "diversity": True,
    "vendi": True,
    "straight_fraction": True,
    "upright_fraction": True,
    "vertical_error_deg": False,
    "horizontal_error_deg": False,
    "control_f1": True,
}
GEOMETRY_COLUMNS = ("straight_fraction", "upright_fraction", "vertical_error_deg", "horizontal_error_deg")
NEEDS_DINO = {"fd_dino", "kid_dino", "diversity", "vendi"}
NEEDS_REFERENCE = {"fd_dino", "kid_dino"}
KID_SUBSETS = 100


@dataclass
class MetricModels:
    """The metric networks, loaded on first use (a geometry-only evaluation never loads CLIP or DINOv2)."""

    clip_name: str
    dino_name: str
    _loaded: dict[str, Any] = field(default_factory=dict)

    def clip(self):
        from archdiff.eval.features import load_clip

        if "clip" not in self._loaded:
            self._loaded["clip"] = load_clip(self.clip_name)
        return self._loaded["clip"]

    def dino(self):
        from archdiff.eval.features import load_dino

        if "dino" not in self._loaded:
            self._loaded["dino"] = load_dino(self.dino_name)
        return self._loaded["dino"]

    def described(self) -> dict[str, dict[str, str]]:
        """The models that measured, by the name given and the digest of their files (for report.json)."""
        return {kind: {"id": model.name, "digest": model.digest} for kind, model in self._loaded.items()}

    def load_for(self, metrics: set[str]) -> None:
        """Load what `metrics` need now, so an unloadable model fails before any image is drawn (both are looked for
        before either loads)."""
        from archdiff.eval.features import CLIP_WHAT, DINO_WHAT, metric_source

        if "clip_score" in metrics:
            metric_source(self.clip_name, CLIP_WHAT)
        if metrics & NEEDS_DINO:
            metric_source(self.dino_name, DINO_WHAT)
        if "clip_score" in metrics:
            self.clip()
        if metrics & NEEDS_DINO:
            self.dino()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def clip_scores(models: MetricModels, images: Iterable, prompts: Sequence[str]) -> list[float]:
    """Each image's CLIP score against its own prompt."""
    from archdiff.eval.features import clip_image_embeds, clip_text_embeds
    from archdiff.eval.metrics import clip_score

    clip = models.clip()
    return clip_score(clip_image_embeds(clip, images), clip_text_embeds(clip, list(prompts))).tolist()


def group_diversity(features, groups: Sequence[int]) -> dict[str, float | None]:
    """Mean over groups of 2+ images of the pairwise cosine distance and of the Vendi score; None without such a group."""
    import torch

    from archdiff.eval.metrics import pairwise_diversity, vendi_score

    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    compared = [torch.as_tensor(indices) for indices in members.values() if len(indices) > 1]
    if not compared:
        return {"diversity": None, "vendi": None}
    return {
        "diversity": sum(pairwise_diversity(features[i]) for i in compared) / len(compared),
        "vendi": sum(vendi_score(features[i]) for i in compared) / len(compared),
    }


def geometry_scores(images: Iterable) -> dict[str, float | None]:
    from archdiff.eval.geometry import line_geometry, mean_geometry

    return mean_geometry([line_geometry(image) for image in images])


def score_images(
    open_images: Callable[[], Iterable],
    prompts: Sequence[str],
    groups: Sequence[int],
    metrics: set[str],
    models: MetricModels,
    reference=None,
    control_f1: Callable[[], list[float]] | None = None,
) -> dict[str, Any]:
    """Every asked metric of one set of images, as report columns (None where it cannot be computed).

    `open_images()` yields the images afresh for each pass (CLIP, DINOv2, geometry), so they are never all in memory.
    `reference`: the real images' DINOv2 features, for FD and KID. `control_f1`: each image's control adherence.
    """
    row: dict[str, Any] = {"images": len(prompts)}
    if "clip_score" in metrics:
        scores = clip_scores(models, open_images(), prompts)
        row["clip_score"] = sum(scores) / len(scores)
    if metrics & NEEDS_DINO:
        from archdiff.eval.features import dino_features

        features = dino_features(models.dino(), open_images())
        if metrics & NEEDS_REFERENCE and reference is None:
            raise UserError("FD and KID need real images to compare with, and this run has none held out or to train on")
        if "fd_dino" in metrics:
            from archdiff.eval.metrics import frechet_distance

            row["fd_dino"] = frechet_distance(reference, features)
        if "kid_dino" in metrics:
            from archdiff.eval.metrics import kernel_distance

            size = max(2, min(len(reference), len(features)) // 2)  # half of each set per subset: a spread, not 0
            row["kid_dino"], row["kid_dino_std"] = kernel_distance(reference, features, subsets=KID_SUBSETS, subset_size=size)
        row.update({name: value for name, value in group_diversity(features, groups).items() if name in metrics})
    if "geometry" in metrics:
        row.update(geometry_scores(open_images()))
    if "control_f1" in metrics and control_f1 is not None:
        scores = control_f1()
        row["control_f1"] = sum(scores) / len(scores)
    return {key: (_finite(value) if isinstance(value, float) else value) for key, value in row.items()}
