"""Data stage: sources -> catalog (every image opened once) -> samples (buckets, tiles) -> caches."""
