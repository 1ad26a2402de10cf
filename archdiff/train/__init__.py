"""The training stage: objective, step, evaluation, guards, loop, checkpoints and the run that orders them."""
