# The two commands of the README are `make demo` and `make test`; everything else is set-up they call.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MLServer (and its protobuf<7 pin) lives in its own venv; the MLServer adapter tests use it.
MLSERVER_STAMP := .venv-mlserver/.installed

.PHONY: demo test test-slow coverage lint fmt protos clean

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

# Line coverage of mesh/, puller/ and runtime_adapters/, the pod and runtime subprocesses included
# ([tool.coverage.*] in pyproject.toml); report on the terminal and in var/coverage/html.
coverage: $(STAMP) $(MLSERVER_STAMP)
	rm -rf var/coverage && mkdir -p var/coverage
	$(BIN)/python -m pytest -q --cov --cov-config=pyproject.toml --cov-report=term --cov-report=html:var/coverage/html

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .venv-mlserver var .mesh
