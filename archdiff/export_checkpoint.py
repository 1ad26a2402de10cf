"""Which checkpoint `archdiff export --checkpoint best|STEP` means: a step the run has a checkpoint at, or the one
`archdiff eval` scored best in RUN/eval/report.json. Every refusal comes before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

from archdiff.errors import UserError, first_line
from archdiff.run_files import EVAL_DIR, EVAL_REPORT, checkpoint_step, complete_checkpoints


def pick_checkpoint(run_dir: Path, spec: str) -> Path:
    """The run's complete checkpoint that `spec` (best, latest, 200 or step-000200) names."""
    from archdiff.checkpoint_loras import find_steps

    spec = spec.strip()
    if spec != "best":
        if spec != "latest" and not spec.removeprefix("step-").isdigit():
            raise UserError(f"--checkpoint takes best, latest or a step like 200 or step-000200 (got '{spec}')")
        return find_steps(run_dir, spec)[0]
    step, weights = best_step(run_dir)
    by_step = {checkpoint_step(path): path for path in complete_checkpoints(run_dir)}
    if step in by_step:
        return _unchanged(by_step[step], weights, run_dir)
    there = f"it has steps {', '.join(map(str, by_step))}" if by_step else "it has no complete checkpoint"
    raise UserError(
        f"{run_dir / EVAL_DIR / EVAL_REPORT} names step {step} best, but '{run_dir}' no longer has a checkpoint there ({there}; "
        f"deleted by train.checkpoint_limit, or the run was trained again): run `archdiff eval {run_dir}` again, or pass a step"
    )


def _unchanged(checkpoint: Path, weights: str | None, run_dir: Path) -> Path:
    """The checkpoint the report scored, not one written at the same step since (a resumed or retrained run)."""
    from archdiff.file_digests import folder_digest

    if weights is not None and folder_digest(checkpoint) != weights:
        raise UserError(
            f"{checkpoint} changed after `archdiff eval` scored it best (the run was resumed or trained again): "
            f"run `archdiff eval {run_dir}` again, or pass the step"
        )
    return checkpoint


def best_step(run_dir: Path) -> tuple[int, str | None]:
    """The step of the report's best row and the digest of the files it scored (None in a report without it); one line
    when there is no report, it is damaged, or the base won."""
    path = run_dir / EVAL_DIR / EVAL_REPORT
    if not path.is_file():
        raise UserError(f"'{run_dir}' has not been evaluated ({path} is missing): run `archdiff eval {run_dir}` first")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))["best"]
        name, step = best["name"], best["step"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else first_line(error)
        raise UserError(f"{path} is damaged ({reason}): run `archdiff eval {run_dir}` again") from None
    if name == "base":
        raise UserError(
            f"{path}: the base model without the LoRA scored best ({best.get('metric', 'its metric')}), "
            "so there is no checkpoint to export as the best (pass --checkpoint STEP to export one anyway)"
        )
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f"{path} is damaged (its best entry has step {step!r}): run `archdiff eval {run_dir}` again")
    return step, best.get("weights")
