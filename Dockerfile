# One image for every Impasto service: `impasto web`, `impasto worker` and `impasto db upgrade`
# (docker-compose.yml picks the command).
#
# GPU: no CUDA base image is needed. PyPI's Linux x86_64 wheel of torch==2.15 is already the
# CUDA build (CUDA 13: it pulls in the cuda-toolkit and nvidia-* libraries, about 5 GB), so
# `pip install .` gives the worker its GPU support. The host needs only an NVIDIA driver recent
# enough for CUDA 13 (R580 or later) and the NVIDIA Container Toolkit.
# The web tier runs from the same image and simply never imports torch.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/models/torch \
    IMPASTO_DATA_DIR=/data

WORKDIR /app

# The dependencies first, in a layer of their own, so that a code change does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself: the packages pyproject.toml includes, and the README it names.
COPY README.md ./
COPY shared/ shared/
COPY worker/ worker/
COPY web/ web/
COPY migrations/ migrations/
RUN pip install --no-deps .

# Run as an unprivileged user. /data (IMPASTO_DATA_DIR) and /models/torch (TORCH_HOME, where the
# VGG-19 weights are cached) belong to it, so named volumes mounted there start out writable.
RUN useradd --create-home --uid 1000 impasto \
    && mkdir -p /data /models/torch \
    && chown -R impasto:impasto /data /models
USER impasto

# docker-compose.yml always names the command; on its own the image lists the subcommands.
CMD ["impasto", "--help"]
