# Search All on a slim Python base. torch's wheel from PyPI carries its own CUDA libraries, so
# the image needs no CUDA base (that held them twice); on a GPU host only the NVIDIA driver and
# the container toolkit are needed (`docker run --gpus all`), and the same image runs on a CPU.
# The ImageBind checkpoint is not baked in: a cache volume at /cache keeps it (and the page
# memory of chat buttons) across containers, so it is downloaded once.
#   docker build -t search-all .
#   docker run --rm -v search-all-cache:/cache -v search-all-data:/app/data \
#       -v "$PWD/config.toml:/app/config.toml:ro" -e DISCORD_TOKEN search-all bot discord --config /app/config.toml
# docs/compose.yaml runs them as a service, with the GPU as an opt-in override.
# For hosts without a GPU, build with the CPU-only torch (about 290 MiB less resident memory
# per bot process and a far smaller image; benchmarks/README.md, startup and memory):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t search-all:cpu .

FROM python:3.12.8-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS build
# Empty: torch and torchaudio from PyPI (CUDA builds). A PyTorch index such as
# https://download.pytorch.org/whl/cpu installs its builds first; pyproject.toml accepts either.
ARG TORCH_INDEX_URL=""
WORKDIR /src
RUN python3 -m venv /opt/venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" "torch>=2.11,<2.15" "torchaudio>=2.11,<2.12"; \
    fi
COPY pyproject.toml README.md ./
COPY core ./core
COPY ingest ./ingest
COPY bot ./bot
RUN /opt/venv/bin/pip install ".[discord,slack,s3,ingest]"

FROM base
ENV PATH=/opt/venv/bin:$PATH \
    XDG_CACHE_HOME=/cache \
    SEARCH_ALL_OPS__HEALTH_HOST=0.0.0.0
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 searchall \
    && mkdir -p /cache /app/data \
    && chown 10001:10001 /cache /app/data
WORKDIR /app
USER 10001:10001
VOLUME ["/cache", "/app/data"]
# Liveness and readiness of a running bot: the ops server of [ops] (port 9090 by default; the
# check follows SEARCH_ALL_OPS__HEALTH_PORT when the environment moves it).
EXPOSE 3000 7860 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEARCH_ALL_OPS__HEALTH_PORT', '9090'), timeout=4)"]
ENTRYPOINT ["search-all"]
CMD ["--help"]
