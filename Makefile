# The two commands of the README are `make demo` and `make test`; everything else is a step.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
GEN := services/common/_generated/.stamp
PROTOS := $(shell find proto -name '*.proto')

.PHONY: setup protos demo test test-unit lint stop k8s-check clean

setup: $(STAMP) $(GEN)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

$(GEN): $(PROTOS) scripts/gen_protos.sh $(STAMP)
	bash scripts/gen_protos.sh
	touch $@

protos: $(GEN)

demo: setup
	$(BIN)/python -m demo

test: setup
	$(BIN)/python -m pytest -ra --timeout=1800 --durations=30

test-unit: setup
	$(BIN)/python -m pytest -ra tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd proto && ../.tools/node_modules/.bin/buf lint

# Renders k8s/ base and overlays and validates them offline against pinned Kubernetes schemas.
k8s-check: setup
	bash scripts/k8s_check.sh

stop: setup
	$(BIN)/tuneplex stop

clean:
	rm -rf $(VENV) services/common/_generated .tools
