"""`python -m archdiff` (also what `accelerate launch -m archdiff` runs)."""

from archdiff.cli import main

main()
