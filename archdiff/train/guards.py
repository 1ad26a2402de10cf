"""What keeps a run safe without slowing its steps: the NaN guard and the Ctrl-C/SIGTERM stop request."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from archdiff.errors import Diverged


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the step in flight was finished and checkpointed before stopping."""

    def __init__(self, step: int, checkpoint: Path | None, signal_number: int, main: bool):
        super().__init__(step)
        self.step, self.checkpoint, self.signal_number, self.main = step, checkpoint, signal_number, main


class NanGuard:
    """Skips an optimizer update whose loss is not finite, without a host sync in the step.

    torch's fused AdamW skips its update when `found_inf` is set (the device-side flag GradScaler
    uses), so the check stays on the device; the run stops at the next sync point (logging,
    checkpoint, samples, the end) naming the first bad step. Optimizers without that flag
    (bitsandbytes' 8-bit AdamW) are checked on the host at once.
    """

    def __init__(self, optimizer, device, checkpoints: Path):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
        self.optimizer = inner if isinstance(inner, torch.optim.AdamW) and inner.defaults.get("fused") else None
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: every step so far was finite
        self.window_bad = torch.zeros((), dtype=torch.bool, device=device)  # within one gradient-accumulation window
        self.checkpoints = checkpoints

    def record(self, loss: torch.Tensor, step: int, accelerator) -> None:
        """Note whether this micro-batch's loss (on any process) is finite; before `optimizer.step()`."""
        bad = ~torch.isfinite(loss.detach())
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad.float(), reduction="sum") > 0  # a collective, not a host sync
        self.window_bad |= bad
        self.first_bad = torch.where((self.first_bad == 0) & bad, step, self.first_bad)
        if self.optimizer is None:
            self.check(loss)
        else:
            self.optimizer.found_inf = self.window_bad.float()

    def step_done(self) -> None:
        self.window_bad = torch.zeros_like(self.window_bad)

    def check(self, loss: torch.Tensor | None = None) -> None:
        """A host sync: raise if any step so far had a non-finite loss."""
        step = int(self.first_bad)
        if step:
            said = f"the loss became {loss.item()}" if loss is not None else "the loss became nan or inf"
            raise Diverged(
                f"{said} at step {step}; nothing from that step was applied. "
                "Lower train.learning_rate or use mixed_precision bf16 (fp16 overflows); "
                f"the last checkpoint is in {self.checkpoints}"
            )


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step instead of dying mid-step."""

    def __init__(self):
        self.signal_number = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame):
        if self.signal_number:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal_number = number

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def stop_requested(stop: StopRequest, accelerator, step: int, every: int) -> bool:
    """Every process stops at the same step when any of them was signalled.

    Agreeing on that takes a collective and a host sync, so several processes only ask every `every` steps
    (the logging interval, which syncs anyway); a signal then takes up to that many steps to stop the run.
    """
    if accelerator.num_processes == 1:
        return stop.signal_number != 0
    if step % every:
        return False
    running = accelerator.gather(torch.tensor([stop.signal_number == 0], device=accelerator.device))
    return not bool(running.all())
