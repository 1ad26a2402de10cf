"""How library exceptions become one-line reasons."""

from archdiff.errors import first_line


def test_first_line_keeps_one_line_and_names_a_silent_error():
    assert first_line(ValueError("bad key 'x'\n  full trace of details")) == "bad key 'x'"
    assert first_line(KeyError()) == "KeyError", "an exception with no message still gives a reason, not an IndexError"
    assert first_line(OSError("  \n")) == "OSError"
