# archdiff on a CUDA GPU.
#   docker build -t archdiff .
#   docker run --gpus all -v archdiff-cache:/cache -v "$PWD/runs:/app/runs" archdiff train --recipe facade-lora
# Own data: add -v /path/to/photos:/data and pass --data /data.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A venv keeps pip away from the system Python; its bin/ goes first on PATH.
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN pip install --upgrade pip

# torch from the default index (its CUDA build), in a layer of its own so code changes don't re-download it.
RUN pip install torch

# A regular (non-editable) install: the wheel carries the recipes and bundled datasets, so the source is deleted.
# Only what the build reads is copied.
COPY pyproject.toml setup.py README.md /tmp/archdiff-src/
COPY archdiff /tmp/archdiff-src/archdiff
COPY recipes /tmp/archdiff-src/recipes
COPY datasets /tmp/archdiff-src/datasets
RUN pip install '/tmp/archdiff-src[cuda]' && rm -rf /tmp/archdiff-src

# The working folder: runs/ is written here, and recipes in /app/recipes are found by name.
WORKDIR /app

ENV OMP_NUM_THREADS=4 \
    HF_HOME=/cache/hf \
    ARCHDIFF_CACHE=/cache/archdiff
VOLUME ["/cache", "/app/runs"]

ENTRYPOINT ["archdiff"]
CMD ["--help"]
