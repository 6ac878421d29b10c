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
VERSION ?=
PYTEST_ARGS ?=
UI_PORT ?= 5000
# The embedded store train.py uses by default (config.yaml: mlflow.tracking_uri).
MLFLOW_STORE ?= sqlite:///mlflow.db

# Bundle signing (churn/bundle.py): train signs, promote and serve verify. BUNDLE_SIGNING_KEY
# or BUNDLE_SIGNING_KEY_FILE from the environment wins; otherwise a random key is made once
# in SIGNING_KEY_FILE (gitignored, mode 600) so a fresh clone works. Keep it: bundles signed
# with it load only with it.
SIGNING_KEY_FILE ?= .secrets/bundle_signing.key
ifeq ($(strip $(BUNDLE_SIGNING_KEY)$(BUNDLE_SIGNING_KEY_FILE)),)
KEY_ENV := BUNDLE_SIGNING_KEY_FILE=$(abspath $(SIGNING_KEY_FILE))
KEY_DEP := $(SIGNING_KEY_FILE)
endif

# Installs are keyed on the requirement files: edit one and the next target reinstalls.
# pip prints each package it fetches, so the 1-3 minute first install is visibly moving.
$(BIN)/.installed: requirements-dev.txt requirements.txt requirements-serve.txt
	@test -x $(PY) || { echo "[install] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "[install] upgrading pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "[install] installing the pinned stack from requirements-dev.txt (1-3 minutes the first time)"
	$(PY) -m pip install --progress-bar on -r requirements-dev.txt
	@touch $@
	@echo "[install] done: $(VENV) is ready"

.PHONY: help
help: ## List the targets with what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(BIN)/.installed ## Create .venv and install the pinned dev stack (once)

$(SIGNING_KEY_FILE):
	@mkdir -p $(@D) && chmod 700 $(@D)
	@(umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_hex(32))' > $@.tmp) && mv $@.tmp $@
	@echo "created the bundle signing key $@ (gitignored; bundles signed with it need it to load)"

.PHONY: signing-key
signing-key: $(KEY_DEP) ## Make the local bundle signing key (.secrets/, mode 600) unless one is set

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
train: $(BIN)/.installed data/churn_train.csv | $(KEY_DEP) ## Train, log and register in MLflow; candidate bundle to candidates/v<N>/
	$(KEY_ENV) $(PY) train.py --config $(CONFIG)

# promote_model.py's exit codes: 0 ok, 1 gate refused, 2 error, 3 another promotion running.
# make turns any failure into its own exit 2, so the recipe names the CLI's code first.
PROMOTE = $(PY) promote_model.py --config $(CONFIG) --alias $(ALIAS)
SAY_CODE = || { code=$$?; echo "promote_model.py exited $$code (1 gate refused, 2 error, 3 another promotion running)" >&2; exit $$code; }

.PHONY: promote
promote: $(BIN)/.installed | $(KEY_DEP) ## Gate and promote the newest version (or VERSION=N) to ALIAS; production is exported to artifacts/
	$(KEY_ENV) $(PROMOTE) $(if $(VERSION),--version $(VERSION)) $(SAY_CODE)

.PHONY: gate
gate: $(BIN)/.installed | $(KEY_DEP) ## Run the promotion gate and checks only, change nothing (VERSION=N; exit 1 if refused)
	$(KEY_ENV) $(PROMOTE) $(if $(VERSION),--version $(VERSION)) --dry-run $(SAY_CODE)

.PHONY: rollback
rollback: $(BIN)/.installed | $(KEY_DEP) ## Return ALIAS to its previous version (production: re-exported to artifacts/)
	$(KEY_ENV) $(PROMOTE) --rollback $(SAY_CODE)

.PHONY: ui
ui: $(BIN)/.installed ## MLflow UI on the embedded store: http://127.0.0.1:$(UI_PORT) (runs, plots, versions)
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(UI_PORT) --workers 1

.PHONY: serve
serve: $(BIN)/.installed | $(KEY_DEP) ## Serve the promoted bundle in artifacts/ on http://$(HOST):$(PORT) (no training)
	@test -f artifacts/model.pkl || { echo "serve: artifacts/ holds no promoted model; run 'make train promote' first" >&2; exit 1; }
	@test ! -f artifacts/release.json || echo "serve: $$(tr -d '\n ' < artifacts/release.json)"
	@rm -rf .cache/prometheus && mkdir -p .cache/prometheus
	$(KEY_ENV) PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/.cache/prometheus \
	  $(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --workers $(WORKERS) \
	  --no-server-header

# A refused candidate does not stop the demo: serve keeps serving the last promoted model.
.PHONY: run
run: train ## Set up, generate data, train, promote (if the gate passes) and serve on http://localhost:$(PORT)
	@$(MAKE) --no-print-directory promote || echo "run: the new candidate was not promoted; serving the last promoted model" >&2
	@$(MAKE) --no-print-directory serve

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

# The monitoring CLIs' own exit codes (printed on failure; make itself then exits 2 and shows
# "Error <code>"): drift 1 drift, 2 error, 3 insufficient data (nothing judged); closed loop
# 1 gate refused the retrained model, 2 error, 3 nothing judged.
.PHONY: drift
drift: $(BIN)/.installed ## Drift check, last 24h of the log vs the bundle's profile (exit 1 drift, 2 error, 3 nothing judged)
	$(PY) -m monitoring.drift_detector --reference artifacts/metadata.json --since 24h \
	  --json reports/drift.json --html reports/drift.html $(DRIFT_ARGS); \
	  code=$$?; case $$code in 0) ;; \
	    1) echo "make drift: exit 1: drift detected" >&2 ;; \
	    3) echo "make drift: exit 3: insufficient data, nothing judged (not 'no drift')" >&2 ;; \
	    *) echo "make drift: exit $$code: error (see the line above)" >&2 ;; esac; exit $$code

.PHONY: closed-loop
closed-loop: $(BIN)/.installed ## One closed-loop cycle: drift + labels -> retrain, gate, promote (exit 1 refused, 2 error, 3 nothing judged)
	$(PY) -m monitoring.closed_loop --config $(CONFIG) --since 24h \
	  --json reports/closed_loop.json $(CLOSED_LOOP_ARGS); \
	  code=$$?; case $$code in 0) ;; \
	    1) echo "make closed-loop: exit 1: the gate refused the retrained model" >&2 ;; \
	    3) echo "make closed-loop: exit 3: insufficient data, nothing judged" >&2 ;; \
	    *) echo "make closed-loop: exit $$code: error (see the line above)" >&2 ;; esac; exit $$code

# Progressive delivery (rollout.py): exit codes of evaluate and promote are 0 promote,
# 1 reject, 2 error, 3 undecided (keep collecting); start/canary/abort/status 0 done,
# 1 gate refused (start), 2 error. make turns a failure into its own exit 2, so each recipe
# names the CLI's code first.
ROLLOUT = $(PY) rollout.py --config $(CONFIG)
ROLLOUT_CODE = || { code=$$?; echo "rollout.py exited $$code (evaluate/promote: 1 reject, 3 undecided; 1 gate refused; 2 error)" >&2; exit $$code; }
ROLLOUT_EVIDENCE = $(if $(DATABASE_URL),--database-url $(DATABASE_URL)) $(if $(PROMETHEUS_URL),--prometheus $(PROMETHEUS_URL))

.PHONY: rollout-start
rollout-start: $(BIN)/.installed | $(KEY_DEP) ## Gated, verified version (VERSION=N, default newest) to @challenger in shadow
	$(KEY_ENV) $(ROLLOUT) start $(if $(VERSION),--version $(VERSION)) $(if $(REASON),--reason "$(REASON)") $(ROLLOUT_CODE)

.PHONY: rollout-canary
rollout-canary: $(BIN)/.installed ## Challenger answers SHARE= of traffic (default rollout.canary_share), sticky per key; PAIRED=no: routing alone
	$(ROLLOUT) canary $(if $(SHARE),--share $(SHARE)) $(if $(filter no,$(PAIRED)),--unpaired) $(if $(filter yes,$(PAIRED)),--paired) $(ROLLOUT_CODE)

.PHONY: rollout-evaluate
rollout-evaluate: $(BIN)/.installed ## Paired evidence + decision; reports/rollout.{json,html} (PUSHGATEWAY=, PROMETHEUS_URL=)
	$(ROLLOUT) evaluate $(ROLLOUT_EVIDENCE) --json reports/rollout.json --html reports/rollout.html \
	  $(if $(PUSHGATEWAY),--pushgateway $(PUSHGATEWAY)) $(ROLLOUT_CODE)

.PHONY: rollout-promote
rollout-promote: $(BIN)/.installed | $(KEY_DEP) ## Promote the challenger if the evidence says so (gated export to artifacts/)
	$(KEY_ENV) $(ROLLOUT) promote $(ROLLOUT_EVIDENCE) $(if $(OVERRIDE),--override "$(OVERRIDE)") $(ROLLOUT_CODE)

.PHONY: rollout-abort
rollout-abort: $(BIN)/.installed ## End the rollout as rejected and remove @challenger (REASON= required)
	@test -n "$(REASON)" || { echo "make rollout-abort: set REASON=..." >&2; exit 2; }
	$(ROLLOUT) abort --reason "$(REASON)" $(ROLLOUT_CODE)

.PHONY: rollout-status
rollout-status: $(BIN)/.installed ## The rollout record, its history and the evidence so far
	$(ROLLOUT) status $(ROLLOUT_CODE)

.PHONY: bench
bench: $(BIN)/.installed | $(KEY_DEP) ## Benchmarks (bench/RESULTS.md, Spark scoring too); not part of make test
	$(KEY_ENV) $(PY) -m bench.run $(BENCH_ARGS)
	$(KEY_ENV) $(PY) -m bench.spark_batch $(SPARK_BENCH_ARGS)

.PHONY: bench-spark
bench-spark: $(BIN)/.installed | $(KEY_DEP) ## Spark nightly scoring vs spark_udf vs pandas (SPARK_BENCH_ARGS=--rows N)
	$(KEY_ENV) $(PY) -m bench.spark_batch $(SPARK_BENCH_ARGS)

.PHONY: score-batch
score-batch: $(BIN)/.installed | $(KEY_DEP) ## Score a customer table on Spark: make score-batch INPUT=... OUTPUT=...
	@test -n "$(INPUT)" || { echo "make score-batch: set INPUT=<customer table>"; exit 2; }
	$(KEY_ENV) $(PY) score_batch.py --config $(CONFIG) --input $(INPUT) --output $(or $(OUTPUT),scores) \
	  --model $(or $(MODEL),artifacts) $(BATCH_ARGS)

NANNYML_VENV := .cache/nannyml-venv
CBPE_DIR := bench/results/cbpe

.PHONY: bench-cbpe
bench-cbpe: $(BIN)/.installed ## Label-free estimate vs NannyML's CBPE on the same windows (own venv)
	@test -x $(NANNYML_VENV)/bin/python || ( $(PYTHON) -m venv $(NANNYML_VENV) && \
	  $(NANNYML_VENV)/bin/pip install --quiet nannyml==0.13.1 statsmodels==0.15.0 )
	$(PY) -m bench.cbpe_compare prepare $(CBPE_DIR)
	NML_DISABLE_USAGE_LOGGING=1 $(NANNYML_VENV)/bin/python -P bench/cbpe_compare.py nannyml $(CBPE_DIR)
	$(PY) -m bench.cbpe_compare compare $(CBPE_DIR)

.PHONY: base-image
base-image: ## Build (once, then cached) the debootstrap base image for podman builds
	scripts/build_base_image.sh

.PHONY: image
image: $(BIN)/.installed ## Build the API image with podman (bakes in artifacts/ from make promote)
	scripts/build_image.sh api

.PHONY: images
images: $(BIN)/.installed ## Build the API, trainer and MLflow images with podman
	scripts/build_image.sh all

.PHONY: image-run
image-run: $(BIN)/.installed | $(KEY_DEP) ## Run the API image's own command via chroot (root; no container runtime)
	$(PY) scripts/run_image_chroot.py localhost/churn-api:latest --env PORT=$(PORT) \
	  --env BUNDLE_SIGNING_KEY="$${BUNDLE_SIGNING_KEY:-$$(cat "$${BUNDLE_SIGNING_KEY_FILE:-$(SIGNING_KEY_FILE)}")}"

.PHONY: score
score: $(BIN)/.installed ## Replay FILE= (a CSV) to the running API in batches; answers to OUT= (URL=, FEEDBACK=column)
	@test -n "$(FILE)" || { echo "usage: make score FILE=data/x.csv [URL=http://localhost:$(PORT)] [OUT=reports/x_scored.csv] [FEEDBACK=churned]" >&2; exit 2; }
	$(PY) scripts/score_csv.py $(FILE) --url $(or $(URL),http://localhost:$(PORT)) \
	  $(if $(OUT),--out $(OUT)) $(if $(FEEDBACK),--feedback $(FEEDBACK))

.PHONY: webhook
webhook: $(BIN)/.installed ## Create or update the MLflow webhook that reloads the API on alias moves (URL=, WEBHOOK_SECRET)
	@test -n "$(URL)" || { echo "usage: make webhook URL=http://<api>:8000/hooks/mlflow [MLFLOW_TRACKING_URI=http://localhost:5000] with WEBHOOK_SECRET (or WEBHOOK_SECRET_FILE) set" >&2; exit 2; }
	$(PY) -m app.webhook register --url $(URL) --tracking-uri $(or $(MLFLOW_TRACKING_URI),http://localhost:5000)

.PHONY: smoke
smoke: $(BIN)/.installed ## Smoke-test a running API: make smoke URL=http://localhost:8000
	$(PY) scripts/smoke_test.py --url $(or $(URL),http://localhost:$(PORT))

# Blue/green on Kubernetes (deploy/k8s-bluegreen): standard library + kubectl, no venv needed.
# Exit codes: 0 done, 1 refused (the Service was not switched), 2 usage or cluster error.
BLUEGREEN = $(PYTHON) scripts/deploy_bluegreen.py $(if $(NAMESPACE),--namespace $(NAMESPACE))

.PHONY: bluegreen-deploy
bluegreen-deploy: ## Deploy IMAGE= (...@sha256:) serving VERSION= to the idle colour, smoke-test, switch (NAMESPACE=, MODEL_URI=)
	@test -n "$(IMAGE)" && test -n "$(VERSION)" || { echo "usage: make bluegreen-deploy IMAGE=ghcr.io/...@sha256:... VERSION=<model version> [NAMESPACE=] [MODEL_URI=]" >&2; exit 2; }
	$(BLUEGREEN) deploy --image $(IMAGE) --model-version $(VERSION) $(if $(MODEL_URI),--model-uri $(MODEL_URI))

.PHONY: bluegreen-rollback
bluegreen-rollback: ## Switch the churn-api Service back to the other (still running) colour (NAMESPACE=)
	$(BLUEGREEN) rollback

.PHONY: bluegreen-status
bluegreen-status: ## The live colour and the image and model version of each colour (NAMESPACE=)
	$(BLUEGREEN) status

.PHONY: compose-config
compose-config: ## Validate docker-compose.yml (needs a .env; see .env.example)
	docker-compose --env-file $(or $(wildcard .env),.env.example) config --quiet

.PHONY: clean
clean: ## Remove caches, the embedded MLflow store, candidates/ and artifacts/ (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov .cache reports mlruns mlartifacts
	rm -f mlflow.db prediction_log.db
	rm -rf candidates
	find artifacts -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
