# `steeldefect serve` as a container (docs/inference.md, "Serve"). Not built on the development machines (no
# docker there): build and try it where docker runs:
#   docker build -t steeldefect .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/app/models:ro" steeldefect
# The model is not in the image: mount the exported models/ folder (or `dvc artifacts get` it) at /app/models.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY pyproject.toml ./
COPY src ./src
RUN pip install '.[serve]' && rm -rf src build && useradd --create-home --uid 10001 steeldefect
# the OpenVINO self-check records its pass in ~/.cache/steeldefect: the user's own, writable
USER steeldefect
EXPOSE 8000
HEALTHCHECK --interval=10s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=5)"
# SIGTERM (docker stop) drains the requests in flight, then exits 0
CMD ["steeldefect", "serve", "--host", "0.0.0.0"]
