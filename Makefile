# The two commands of the README are `make demo` and `make test`; everything else is set-up they call.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MLServer (and its protobuf<7 pin) lives in its own venv; the MLServer adapter tests use it.
MLSERVER_STAMP := .venv-mlserver/.installed

.PHONY: demo test test-slow lint fmt protos clean ray-venv

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(MLSERVER_STAMP): scripts/mlserver_venv.sh
	PY=$(PY) scripts/mlserver_venv.sh .venv-mlserver

# Ray Serve for the peer comparison benchmark (loadtests/ray_serve), in its own venv; not part of `make test`.
# The script is idempotent (a stamp of its pins), so this target always defers to it.
ray-venv:
	PY=$(PY) scripts/ray_venv.sh .venv-ray

demo: $(STAMP)
	$(BIN)/python -m mesh.devtools.demo

test: $(STAMP) $(MLSERVER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .venv-mlserver .venv-ray var .mesh
