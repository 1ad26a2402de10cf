"""Data stage: sources, transforms and the bundled synthetic sets."""
