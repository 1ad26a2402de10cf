"""The one exception type for bad user input: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Something the user can fix (a recipe key, a path, a base model); never a bug in archdiff."""
