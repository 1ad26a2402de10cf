"""Human-readable sizes and durations."""

from archdiff.units import human_duration, human_size


def test_human_units():
    assert [human_size(n) for n in (512, 2048, 12_900_000, 3 * 1024**3)] == ["512 B", "2.0 KB", "12.3 MB", "3.0 GB"]
    assert [human_duration(s) for s in (42.25, 245, 3720)] == ["42.2 s", "4 min 05 s", "1 h 02 min"]
