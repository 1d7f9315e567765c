# Search All on the NVIDIA CUDA runtime (runs on CPU too: torch falls back when no GPU is given).
# The ImageBind checkpoint is not baked in: a cache volume at /cache keeps it (and the page
# memory of chat buttons) across containers, so it is downloaded once.
#   docker build -t search-all .
#   docker run --rm --gpus all -v search-all-cache:/cache -v "$PWD/data:/app/data" \
#       -e DISCORD_TOKEN search-all bot discord --config /app/config.toml
# docs/compose.yaml runs the Discord and Slack bots with a shared cache and dataset.
# For hosts without a GPU, build with the CPU-only torch (about 290 MiB less resident memory
# per bot process and a far smaller image; benchmarks/README.md, startup and memory):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t search-all:cpu .

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
# Empty: torch and torchaudio from PyPI (CUDA builds). A PyTorch index such as
# https://download.pytorch.org/whl/cpu installs its builds first; pyproject.toml accepts either.
ARG TORCH_INDEX_URL=""
WORKDIR /src
RUN python3.12 -m venv /opt/venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" "torch>=2.5,<2.15" "torchaudio==2.11.0"; \
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
# Liveness and readiness of a running bot: the ops server of [ops] (port 9090 by default).
EXPOSE 3000 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
ENTRYPOINT ["search-all"]
CMD ["--help"]
