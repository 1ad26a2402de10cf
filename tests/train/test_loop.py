"""The training loop's guards, tested on their own."""

import pytest
import torch


def test_nan_guard_skips_the_update_on_the_device_and_names_the_first_bad_step(tmp_path):
    """Fused AdamW's found_inf flag skips the step without a host sync; the check (a sync) comes later."""
    from types import SimpleNamespace

    from archdiff.errors import UserError
    from archdiff.train.loop import NanGuard

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    guard = NanGuard(optimizer, "cpu", tmp_path)
    one_process = SimpleNamespace(num_processes=1)
    for step, loss in enumerate([1.0, float("nan"), 1.0], start=1):
        weight.grad = torch.full((3,), loss)
        before = weight.detach().clone()
        guard.record(torch.tensor(loss), step, one_process)
        optimizer.step()
        guard.step_done()
        assert torch.equal(weight, before) == (step == 2), f"only the non-finite step {step} is skipped"
    with pytest.raises(UserError, match="at step 2; nothing from that step was applied"):
        guard.check()
