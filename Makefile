# Churn MLOps: every workflow is a make target; CI calls the same targets.
# `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PORT ?= 8000
HOST ?= 127.0.0.1
WORKERS ?= 2
ROWS ?= 50000
SEED ?= 42
CONFIG ?= config.yaml
ALIAS ?= production
PYTEST_ARGS ?=

# Installs are keyed on the requirement files: edit one and the next target reinstalls.
$(BIN)/.installed: requirements-dev.txt requirements.txt requirements-serve.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

.PHONY: help
help: ## List the targets with what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(BIN)/.installed ## Create .venv and install the pinned dev stack (once)

data/churn_train.csv: | $(BIN)/.installed
	$(PY) -m churn.datagen --rows $(ROWS) --seed $(SEED) --out $@

.PHONY: data
data: $(BIN)/.installed ## Generate data/churn_train.csv (ROWS=, SEED= to change)
	$(PY) -m churn.datagen --rows $(ROWS) --seed $(SEED) --out data/churn_train.csv

.PHONY: drifted
drifted: $(BIN)/.installed ## Write drifted batches for monitoring demos to data/drift_*.csv
	@for s in price_increase new_payment_method month_to_month_shift; do \
	  $(PY) -m churn.datagen --scenario $$s --rows 5000 --seed 7 --out data/drift_$$s.csv; done

.PHONY: train
train: $(BIN)/.installed data/churn_train.csv ## Train, log and register in MLflow, export artifacts/
	$(PY) train.py --config $(CONFIG)

.PHONY: promote
promote: $(BIN)/.installed ## Gate and promote the newest version to ALIAS (default production)
	$(PY) promote_model.py --config $(CONFIG) --alias $(ALIAS)

.PHONY: gate
gate: $(BIN)/.installed ## Run the promotion gate only (exit 1 if the newest version fails it)
	$(PY) promote_model.py --config $(CONFIG) --alias $(ALIAS) --dry-run

.PHONY: rollback
rollback: $(BIN)/.installed ## Return ALIAS to its previous version
	$(PY) promote_model.py --config $(CONFIG) --alias $(ALIAS) --rollback

.PHONY: serve
serve: $(BIN)/.installed ## Serve artifacts/ on http://$(HOST):$(PORT) (no training)
	@rm -rf .cache/prometheus && mkdir -p .cache/prometheus
	PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/.cache/prometheus \
	  $(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --workers $(WORKERS)

.PHONY: run
run: train promote serve ## Set up, generate data, train, promote and serve on http://localhost:$(PORT)

.PHONY: test
test: $(BIN)/.installed ## Install and run every test (with coverage)
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(BIN)/.installed ## Unit and API tests only (skips slow, integration, container)
	$(BIN)/pytest -m "not slow and not integration and not container" $(PYTEST_ARGS)

.PHONY: lint
lint: $(BIN)/.installed ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: format
format: $(BIN)/.installed ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: drift
drift: $(BIN)/.installed ## Drift check: prediction log of the last 24h vs the bundle's profile
	$(PY) -m monitoring.drift_detector --reference artifacts/metadata.json --since 24h \
	  --json reports/drift.json --html reports/drift.html $(DRIFT_ARGS)

.PHONY: bench
bench: $(BIN)/.installed ## Benchmarks (bench/RESULTS.md, Spark scoring too); not part of make test
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.spark_batch $(SPARK_BENCH_ARGS)

.PHONY: bench-spark
bench-spark: $(BIN)/.installed ## Spark nightly scoring vs spark_udf vs pandas (SPARK_BENCH_ARGS=--rows N)
	$(PY) -m bench.spark_batch $(SPARK_BENCH_ARGS)

.PHONY: score-batch
score-batch: $(BIN)/.installed ## Score a customer table on Spark: make score-batch INPUT=... OUTPUT=...
	@test -n "$(INPUT)" || { echo "make score-batch: set INPUT=<customer table>"; exit 2; }
	$(PY) score_batch.py --config $(CONFIG) --input $(INPUT) --output $(or $(OUTPUT),scores) \
	  --model $(or $(MODEL),artifacts) $(BATCH_ARGS)

.PHONY: base-image
base-image: ## Build (once, then cached) the debootstrap base image for podman builds
	scripts/build_base_image.sh

.PHONY: image
image: $(BIN)/.installed ## Build the API image with podman (needs artifacts/ from make train)
	scripts/build_image.sh api

.PHONY: images
images: $(BIN)/.installed ## Build the API, trainer and MLflow images with podman
	scripts/build_image.sh all

.PHONY: image-run
image-run: $(BIN)/.installed ## Run the API image's own command via chroot (root; no container runtime)
	$(PY) scripts/run_image_chroot.py localhost/churn-api:latest --env PORT=$(PORT)

.PHONY: smoke
smoke: $(BIN)/.installed ## Smoke-test a running API: make smoke URL=http://localhost:8000
	$(PY) scripts/smoke_test.py --url $(or $(URL),http://localhost:$(PORT))

.PHONY: compose-config
compose-config: ## Validate docker-compose.yml (needs a .env; see .env.example)
	docker-compose --env-file $(or $(wildcard .env),.env.example) config --quiet

.PHONY: clean
clean: ## Remove caches, the embedded MLflow store and exported artifacts (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov .cache reports mlruns mlartifacts
	rm -f mlflow.db prediction_log.db artifacts/model.pkl artifacts/model.onnx artifacts/metadata.json
