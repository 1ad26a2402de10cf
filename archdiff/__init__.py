"""archdiff: fine-tune latent-diffusion models on architecture imagery. Imports nothing heavy."""

import time

__version__ = "0.1.0"
STARTED = time.monotonic()  # when the process began importing archdiff: start-up is measured from here
