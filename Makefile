# Two commands for a fresh machine (Python >= 3.11):
#   make test   create .venv, install everything (incl. helm), run the whole test suite
#   make run    run the operator against the cluster in KUBECONFIG
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: test run e2e e2e-local crd bench clean

$(BIN)/.installed: pyproject.toml scripts/install-helm.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	bash scripts/install-helm.sh $(BIN)
	touch $@

test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

run: $(BIN)/.installed
	$(BIN)/modeldeploy run

# The e2e suite against the cluster in KUBECONFIG (see README, "End-to-end tests").
e2e: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest e2e

# The e2e suite on the project's own real Kubernetes, started and stopped here (needs root).
e2e-local: $(BIN)/.installed
	PYTHON=$(abspath $(BIN)/python) e2e/env/run

crd: $(BIN)/.installed
	$(BIN)/modeldeploy crd > crds/modeldeployments.yaml
	cp crds/modeldeployments.yaml charts/modeldeploy/crds/modeldeployments.yaml

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
