# MLflow tracking server + model registry for docker-compose.
#
# The official ghcr.io/mlflow/mlflow image has no PostgreSQL driver, so the compose backend
# store (postgresql+psycopg2://) would fail at start; this image adds psycopg2-binary.
# Build: scripts/build_image.sh mlflow (or `docker build -f docker/mlflow.Dockerfile .`).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build

ARG PIP_CERT=""
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
        "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
    && find /opt/venv/lib -depth -type d -name tests \
        -path '*site-packages/*' \( -path '*/numpy/*' -o -path '*/pandas/*' \
        -o -path '*/scipy/*' -o -path '*/sklearn/*' \) -exec rm -rf {} +

FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="churn-mlflow" \
      org.opencontainers.image.description="MLflow tracking server with the PostgreSQL driver"

RUN groupadd --gid 10001 mlflow \
    && useradd --no-log-init --uid 10001 --gid mlflow --home-dir /mlflow --create-home \
        --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /mlflow
USER 10001:10001
EXPOSE 5000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=3)"]

# Compose passes the real store URIs; this default is a self-contained local server.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--backend-store-uri", "sqlite:////mlflow/mlflow.db", \
     "--artifacts-destination", "/mlartifacts", "--serve-artifacts"]
