"""`archdiff serve`: one base pipeline with the team's LoRAs and ControlNets, as an HTTP API and a web studio.

settings (limits, what the command names) → engine (the pipeline, adapters, one generate) → jobs (the bounded
queue in front of the device) → app (FastAPI routes, auth, errors) → feedback (ratings into SQLite, back to training).
"""
