"""archdiff: fine-tune latent-diffusion models on architecture imagery. Imports nothing heavy."""

__version__ = "0.1.0"
