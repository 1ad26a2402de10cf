"""How library exceptions become one-line reasons."""

from archdiff.errors import Diverged, UserError, first_line


def test_first_line_keeps_one_line_and_names_a_silent_error():
    assert first_line(ValueError("bad key 'x'\n  full trace of details")) == "bad key 'x'"
    assert first_line(KeyError()) == "KeyError", "an exception with no message still gives a reason, not an IndexError"
    assert first_line(OSError("  \n")) == "OSError"


def test_a_diverged_run_has_its_own_exit_code():
    """Scripts tell a diverged run (3) from bad input (2); both stay UserErrors, so both print as one line."""
    assert issubclass(Diverged, UserError)
    assert (UserError.exit_code, Diverged.exit_code) == (2, 3)
    assert Diverged("x").exit_code == 3
