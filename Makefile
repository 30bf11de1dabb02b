# The commands a user runs. Each one sets up what it needs on first use (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
ROOT := $(CURDIR)

HA_ENV = $$(scripts/ensure-env.sh ha)
COMPANION_ENV = $$(scripts/ensure-env.sh companion)

.PHONY: help test test-ha test-companion test-demo coverage lint demo bench bench-learning lock envs clean-envs

help:
	@echo "make test   set up everything on first use, then run the whole test suite in both environments"
	@echo "make demo   run the live demo (see README.md)"
	@echo "make lint   ruff check, ruff format --check, mypy --strict"
	@echo "make bench  run the benchmarks; figures go to bench/results/"
	@echo "make bench-learning  the ML Mule learning benchmark (about an hour on 2 cores)"

envs:
	@echo "HA environment:        $(HA_ENV)"
	@echo "companion environment: $(COMPANION_ENV)"

COVERAGE_DIR = $(ROOT)/build/coverage
PYTEST_PARALLEL = -n 2

test: test-companion test-ha test-demo coverage

test-companion:
	@scripts/ensure-mosquitto.sh
	@env="$(COMPANION_ENV)"; export MLMULE_HA_ENV="$(HA_ENV)"; mkdir -p "$(COVERAGE_DIR)"; \
	  echo "== companion environment ($$env)"; \
	  cd tests/companion && COVERAGE_FILE="$(COVERAGE_DIR)/.coverage.companion" \
	    "$$env/bin/python" -m pytest $(PYTEST_PARALLEL) --cov="$(ROOT)/custom_components/mlmule" --cov-config="$(ROOT)/pyproject.toml" --cov-report=

test-ha:
	@env="$(HA_ENV)"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; mkdir -p "$(COVERAGE_DIR)"; \
	  echo "== Home Assistant environment ($$env)"; \
	  cd tests/ha && COVERAGE_FILE="$(COVERAGE_DIR)/.coverage.ha" \
	    "$$env/bin/python" -m pytest $(PYTEST_PARALLEL) --cov="$(ROOT)/custom_components/mlmule" --cov-config="$(ROOT)/pyproject.toml" --cov-report=

# Coverage of custom_components/mlmule by both suites together (the core runs in both).
coverage:
	@env="$(HA_ENV)"; cd "$(COVERAGE_DIR)" && rm -f .coverage && \
	  "$$env/bin/python" -m coverage combine --rcfile="$(ROOT)/pyproject.toml" --keep -q .coverage.companion .coverage.ha && \
	  "$$env/bin/python" -m coverage report --rcfile="$(ROOT)/pyproject.toml" --skip-covered --sort=cover --fail-under=90 | tail -n 25

# mypy cannot follow setuptools' import finder, so it sees mlmule_core and mlmule_models
# through directory links under build/ (gitignored).
lint:
	@ha="$(HA_ENV)"; companion="$(COMPANION_ENV)"; \
	  "$$ha/bin/ruff" check . && "$$ha/bin/ruff" format --check . && \
	  "$$ha/bin/mypy" custom_components/mlmule demo/mlmule_demo && \
	  mkdir -p build/mypy-path && ln -sfn ../../custom_components/mlmule/core build/mypy-path/mlmule_core && \
	  ln -sfn ../../models build/mypy-path/mlmule_models && \
	  MYPYPATH=build/mypy-path "$$companion/bin/mypy" --python-version 3.11 \
	    -p mule_companion -p mlmule_core -p mlmule_models

demo:
	@ha="$(HA_ENV)"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; \
	  cd demo && PYTHONPATH="$(ROOT)" exec "$$ha/bin/python" -m mlmule_demo

# a short demo (DEMO_MINUTES=3) checked through HA's API and in headless Chromium
test-demo:
	@scripts/ensure-chromium.sh
	@ha="$(HA_ENV)"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; \
	  cd tests/demo && "$$ha/bin/python" -m pytest -q

bench:
	@scripts/ensure-mosquitto.sh
	@env="$(COMPANION_ENV)"; mkdir -p bench/results; \
	  for script in bench/bench_*.py; do echo "== $$script"; "$$env/bin/python" "$$script"; done
	@env="$(HA_ENV)"; echo "== bench/ha (real Home Assistant core)"; cd bench/ha && "$$env/bin/python" -m pytest

# ML Mule against local, centralized, FedAvg, FedAsync and gossip (bench/results/README.md).
bench-learning:
	@env="$(COMPANION_ENV)"; cd bench && "$$env/bin/python" -m mlmule_bench run --jobs 2 && \
	  "$$env/bin/python" -m mlmule_bench flower && "$$env/bin/python" -m mlmule_bench scaling

lock:
	scripts/lock.sh ha
	scripts/lock.sh companion

clean-envs:
	rm -rf "$${MLMULE_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/mlmule}/venvs"
