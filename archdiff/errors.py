"""The one exception type for bad user input: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Something the user can fix (a recipe key, a path, a base model); never a bug in archdiff."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """A library exception as a short reason for a UserError: its first line, or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Diverged(UserError):
    """The loss became NaN or infinite: no update was made with it and the run stopped. Its own exit code,
    so a script can tell a diverged run from a bad input."""

    exit_code = 3
