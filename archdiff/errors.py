"""Errors the CLI prints as one line (no traceback unless --debug) and turns into an exit code."""


class UserError(Exception):
    """Something the user can fix (a recipe key, a path, a base model); never a bug in archdiff."""

    exit_code = 2  # `archdiff` exits with this; scripts tell bad input from other failures by it


class Diverged(UserError):
    """The loss became NaN or infinite and the run stopped (its earlier checkpoints are kept).

    Its own exit code, 3, lets a sweep script tell a diverged run from bad input (2).
    """

    exit_code = 3


def first_line(error: BaseException) -> str:
    """A library exception as a short reason for a UserError: its first line, or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
