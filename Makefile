# The two commands of the README are `make demo` and `make test`; everything else is set-up they call.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MLServer (and its protobuf<7 pin) lives in its own venv; the MLServer adapter tests use it.
MLSERVER_STAMP := .venv-mlserver/.installed

.PHONY: demo test test-slow coverage test-container test-multihost test-chaos lint fmt protos lock clean ray-venv

# requirements-dev.lock pins every package (transitive ones too) with its hashes: the install refuses anything
# else. The project itself goes in editable, without build isolation (the locked setuptools builds it).
$(STAMP): requirements-dev.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
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

# The default suite runs in TEST_WORKERS pytest-xdist workers, each with its own etcd and temp folders;
# --dist loadscope keeps a module's tests (and its module-scoped pods) on one worker. TEST_WORKERS=0 runs it
# in this process, serially.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

test: $(STAMP) $(MLSERVER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(XDIST)

# Line coverage of mesh/, puller/ and runtime_adapters/, the pod and runtime subprocesses included
# ([tool.coverage.*] in pyproject.toml); report on the terminal and in var/coverage/html.
coverage: $(STAMP) $(MLSERVER_STAMP)
	rm -rf var/coverage && mkdir -p var/coverage
	$(BIN)/python -m pytest -q $(XDIST) --cov --cov-config=pyproject.toml --cov-report=term --cov-report=html:var/coverage/html

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Fault injection under a Zipf load (tests/chaos): pods SIGKILLed, the runtime killed and stopped, etcd down,
# slow storage, a full disk; a few minutes, figures in var/chaos/ (docs/benchmarks.md "Chaos"). .ci/run runs it.
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos

# Builds the deploy/Dockerfile images with buildah/podman and runs them (minutes; needs a container engine).
test-container: $(STAMP)
	$(BIN)/python -m pytest -q -m container

# Pods and etcd in separate Linux network namespaces (needs root; skips with the reason otherwise). Bounded:
# every scenario stops on its own, and pytest-timeout ends a stuck one. Figures land in var/multihost/.
test-multihost: $(STAMP)
	$(BIN)/python -m pytest -q -m multihost -o timeout_func_only=false --timeout 300 tests/multihost

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

protos: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_protos.sh

# Re-resolve the locks from pyproject.toml (pins already in a lock are kept; add --upgrade to move them).
# requirements.lock: what a pod and its built-in runtime need; requirements-dev.lock: every extra + tests.
# Resolved against the public index only (no local pip config or wheel folders), so the hashes are its.
PIP_COMPILE = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile -q --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(PIP_COMPILE) --extra runtime -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra runtime --extra minio --extra etcd --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .venv-mlserver .venv-ray var .mesh
