"""``python -m archdiff.data.synth [ROOT]``: regenerate the bundled sets (ROOT defaults to ``datasets``)."""

from archdiff.data.synth import main

main()
