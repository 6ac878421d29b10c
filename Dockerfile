# Churn API image: `podman build .` / `docker build .` (see scripts/build_image.sh).
#
# Stages:
#   build    - /opt/venv with the serving requirements only (pip, wheels, caches stay here)
#   trainer  - build + the training stack and entry points, for the compose one-shot trainer
#              (`--target trainer`); never shipped as the API
#   runtime  - the default, last stage: venv + code + baked model bundle, non-root
#
# BASE_IMAGE defaults to the official slim Python image; on machines without a registry,
# scripts/build_base_image.sh makes a local Debian bookworm base with python3 + venv and
# scripts/build_image.sh passes it in. Both provide `python` and ensurepip.
ARG BASE_IMAGE=python:3.12-slim

# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

# Only set when the build needs a private CA bundle (scripts/build_image.sh mounts the
# host's bundle at this path); empty means pip's own certifi bundle.
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
COPY requirements-serve.txt /tmp/requirements-serve.txt
# Every dependency ships a manylinux wheel, so no compiler is installed. Test suites
# bundled inside numpy/pandas/scipy/sklearn are never imported by the service: drop them.
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        -r /tmp/requirements-serve.txt \
    && find /opt/venv/lib -depth -type d -name tests \
        -path '*site-packages/*' \( -path '*/numpy/*' -o -path '*/pandas/*' \
        -o -path '*/scipy/*' -o -path '*/sklearn/*' \) -exec rm -rf {} +

# --------------------------------------------------------------------------------------
FROM build AS trainer

ARG PIP_CERT=""
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        -r /tmp/requirements.txt \
    && groupadd --gid 10001 churn \
    && useradd --no-log-init --uid 10001 --gid churn --no-create-home --home-dir /app --shell /usr/sbin/nologin churn \
    && mkdir -p /app/data /app/artifacts /app/reports \
    && chown churn:churn /app /app/data /app/artifacts /app/reports

WORKDIR /app
# GIT_PYTHON_REFRESH: MLflow probes for git to tag runs; there is none in the image.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet
# Code is root-owned (read-only for the job); /app itself is writable for the data set,
# artifacts/, reports/ and the model card the entry points write.
COPY config.yaml train.py promote_model.py ./
COPY churn/ ./churn/
COPY monitoring/ ./monitoring/
USER 10001:10001
CMD ["sh", "-c", "python -m churn.datagen && python train.py && python promote_model.py"]

# --------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="churn-api" \
      org.opencontainers.image.description="Customer churn model served by FastAPI" \
      org.opencontainers.image.source="https://github.com/example/churn-mlops"

# Fixed uid/gid so Kubernetes runAsUser / volume ownership can be stated exactly.
RUN groupadd --gid 10001 churn \
    && useradd --no-log-init --uid 10001 --gid churn --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin churn

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    WEB_CONCURRENCY=2 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MODEL_PATH=/app/artifacts/model.pkl \
    DATABASE_URL=sqlite:////tmp/predictions.db
# BUNDLE_SIGNING_KEY is deliberately absent: it is given at run time (compose .env, a
# Kubernetes Secret), never baked into a layer. Without it the service (ENVIRONMENT defaults
# to production) refuses to start; with it, only a bundle signed with that key is loaded.

COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/churn-entrypoint
COPY docker/healthcheck.py /usr/local/bin/churn-healthcheck

WORKDIR /app
# Code and model are root-owned and read-only for the service user; the only writable
# place it needs is /tmp (multiprocess metrics, sqlite prediction log fallback).
COPY config.yaml ./
COPY churn/ ./churn/
COPY app/ ./app/
COPY artifacts/ ./artifacts/
# COPY keeps the build machine's file modes; a bundle written 0600 would be unreadable for
# the service user. Normalise to world-readable, root-writable (a few MB, one layer).
RUN chmod -R a+rX,go-w /app

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/churn-healthcheck"]

ENTRYPOINT ["/usr/local/bin/churn-entrypoint"]
CMD ["serve"]
