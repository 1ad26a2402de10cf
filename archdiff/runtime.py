"""Process set-up shared by the heavy commands: quiet library chatter before the libraries load."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Keep the terminal for archdiff's own progress: library info logs and deprecation notices off."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
