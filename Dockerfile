# Search All: CPU or CUDA (the torch wheel pinned in pyproject.toml carries its CUDA runtime).
# The ImageBind checkpoint is not baked in: mount a cache volume at /cache so it is downloaded once.
#   docker build -t search-all .
#   docker run --rm -v search-all-cache:/cache -v "$PWD/data:/app/data" search-all search --text "a red car"
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    XDG_CACHE_HOME=/cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY ingest ./ingest
COPY bot ./bot
RUN pip install ".[ingest]" \
    && useradd --create-home --uid 10001 searchall \
    && mkdir -p /cache /app/data \
    && chown searchall /cache /app/data

USER searchall
VOLUME ["/cache", "/app/data"]
ENTRYPOINT ["search-all"]
CMD ["--help"]
