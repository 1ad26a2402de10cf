"""`archdiff data inspect` and `archdiff data check-vae`: look at the data before a long run is spent on it.

inspect reports what training would see (skipped files, sizes, aspect ratios, buckets, captions,
duplicates: `stats`) and draws a contact sheet (`sheet`). check-vae round-trips the training crops through
the base's VAE (`vae_check`): what the VAE cannot reproduce (thin plan lines above all) a LoRA can never
learn, however long it trains.
"""
