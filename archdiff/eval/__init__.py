"""Judging trained checkpoints: the metric maths (and, later, the `archdiff eval` command built on it)."""
