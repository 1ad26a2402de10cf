"""`validation.metrics`: each validation grid scored (CLIP score, diversity, Vendi, line geometry) as it is drawn.

The scores go to metrics.jsonl as a row of `val_<metric>` columns at the grid's step and to the trackers, so a
run's curves show whether the pictures, not only the loss, get better. The metric models (eval.clip, eval.dino)
load once, on the main process, before the output folder is touched: a bad name destroys nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archdiff.config import Recipe
from archdiff.errors import UserError
from archdiff.eval.scores import MetricModels
from archdiff.run_files import MetricsLog

PREFIX = "val_"


def load_metric_models(recipe: Recipe) -> MetricModels | None:
    """The models `validation.metrics` needs, loaded now (None when it lists nothing): an unloadable one is one line."""
    import importlib.util

    wanted = set(recipe.validation.metrics)
    if not wanted:
        return None
    if "geometry" in wanted and importlib.util.find_spec("cv2") is None:
        raise UserError("validation.metrics geometry needs OpenCV: pip install 'archdiff[controls]' (or drop geometry)")
    models = MetricModels(recipe.eval.clip, recipe.eval.dino)
    try:
        models.load_for(wanted)
    except UserError as error:
        raise UserError(f"validation.metrics takes its models from eval.clip and eval.dino: {error}") from None
    return models


@dataclass
class GridScorer:
    """Scores one validation grid (rows = prompts, one image per seed; a prompt's images are one diversity group)."""

    recipe: Recipe
    models: MetricModels | None  # None: the recipe asks for no metric (or this is not the main process)
    accelerator: Any
    metrics: MetricsLog

    def __call__(self, rows: list[list], step: int) -> dict[str, float | None]:
        """The grid's `val_*` columns, written to metrics.jsonl (null where not computable) and, when finite, the trackers."""
        from archdiff.eval.scores import score_images

        if self.models is None:
            return {}
        prompts = [prompt for prompt, row in zip(self.recipe.validation.prompts, rows, strict=True) for _ in row]
        groups = [index for index, row in enumerate(rows) for _ in row]
        images = [image for row in rows for image in row]  # a list (with a len): a grid's few images get no feature bars
        scores = score_images(lambda: images, prompts, groups, set(self.recipe.validation.metrics), self.models)
        row = {PREFIX + name: value for name, value in scores.items() if name != "images"}
        self.metrics.write(step=step, **row)
        finite = {name: value for name, value in row.items() if value is not None and math.isfinite(value)}
        if finite:
            self.accelerator.log(finite, step=step)
        return row
