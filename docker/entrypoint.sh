#!/bin/sh
# Container entrypoint of the churn API image.
#
# `serve` (the default CMD) starts uvicorn with WEB_CONCURRENCY workers. Prometheus
# multiprocess mode keeps one metrics file per worker pid in PROMETHEUS_MULTIPROC_DIR; files
# left by a previous run would be summed into the new counters, so the directory is emptied
# here, before any worker starts, all but prediction-spool/: predictions that workers killed
# with the previous server had answered but not written, which the new workers write to the
# log (churn.prediction_log.spool). Any other command is exec'd as given (e.g. `python -m ...`).
set -eu

if [ "${1:-serve}" != "serve" ]; then
    exec "$@"
fi

multiproc_dir="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
mkdir -p "$multiproc_dir"
find "$multiproc_dir" -mindepth 1 -maxdepth 1 ! -name prediction-spool -exec rm -rf {} +
export PROMETHEUS_MULTIPROC_DIR="$multiproc_dir"

exec uvicorn app.main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-2}" \
    --proxy-headers \
    --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}" \
    --timeout-graceful-shutdown "${GRACEFUL_TIMEOUT:-20}" \
    --no-server-header
