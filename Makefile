# The two commands of the README are `make demo` and `make test`; everything else is set-up they call.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MLServer (and its protobuf<7 pin) lives in its own venv; the MLServer adapter tests use it.
MLSERVER_STAMP := .venv-mlserver/.installed

.PHONY: demo test test-slow test-container test-chaos lint fmt protos clean

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(MLSERVER_STAMP): scripts/mlserver_venv.sh
	PY=$(PY) scripts/mlserver_venv.sh .venv-mlserver

demo: $(STAMP)
	$(BIN)/python -m mesh.devtools.demo

test: $(STAMP) $(MLSERVER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Fault injection under a Zipf load (tests/chaos): pods SIGKILLed, the runtime killed and stopped, etcd down,
# slow storage, a full disk; a few minutes, figures in var/chaos/ (docs/benchmarks.md "Chaos"). .ci/run runs it.
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos

# Builds the deploy/Dockerfile images with buildah/podman and runs them (minutes; needs a container engine).
test-container: $(STAMP)
	$(BIN)/python -m pytest -q -m container

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .venv-mlserver var .mesh
