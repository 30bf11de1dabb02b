# The commands a user runs. Each one sets up what it needs on first use (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
ROOT := $(CURDIR)

HA_ENV = $$(scripts/ensure-env.sh ha)
HA_NEWEST_ENV = $$(scripts/ensure-env.sh ha-newest)
COMPANION_ENV = $$(scripts/ensure-env.sh companion)

.PHONY: help test test-ha test-ha-newest test-companion test-demo coverage lint demo docs-img bench \
	bench-learning bench-knowledge lock envs clean-envs

help:
	@echo "make test   set up everything on first use, then run every test: tests/ha on the oldest and"
	@echo "            the newest Home Assistant we support, the companion tests and the demo test"
	@echo "make demo   run the live demo (see README.md)"
	@echo "make lint   ruff check, ruff format --check, mypy --strict"
	@echo "make docs-img  run the demo test and copy its screenshots into docs/img/"
	@echo "make bench  run the benchmarks; figures go to bench/results/"
	@echo "make bench-learning  the ML Mule learning benchmark (about two hours on 2 cores)"
	@echo "make bench-knowledge  weights against knowledge between different models (about 30 CPU-minutes)"

envs:
	@echo "HA environment:        $(HA_ENV)"
	@echo "newest HA environment: $(HA_NEWEST_ENV)"
	@echo "companion environment: $(COMPANION_ENV)"

COVERAGE_DIR = $(ROOT)/build/coverage
PYTEST_PARALLEL = -n 2

test: test-companion test-ha test-ha-newest test-demo coverage

test-companion:
	@scripts/ensure-mosquitto.sh
	@env="$(COMPANION_ENV)"; export MLMULE_HA_ENV="$(HA_ENV)"; mkdir -p "$(COVERAGE_DIR)"; \
	  echo "== companion environment ($$env)"; \
	  cd tests/companion && COVERAGE_FILE="$(COVERAGE_DIR)/.coverage.companion" \
	    "$$env/bin/python" -m pytest $(PYTEST_PARALLEL) --cov="$(ROOT)/custom_components/mlmule" --cov-config="$(ROOT)/pyproject.toml" --cov-report=

export HA_VERSION_LINE = import sys; from homeassistant.const import __version__ as v; \
  print(f"== Home Assistant {v} (Python {sys.version.split()[0]}, {sys.prefix})")

# tests/ha on one Home Assistant environment ($(1): ha or ha-newest), after printing the version
# of Home Assistant that the run imports.
define ha_tests
	@scripts/ensure-mosquitto.sh
	@env="$$(scripts/ensure-env.sh $(1))"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; mkdir -p "$(COVERAGE_DIR)"; \
	  "$$env/bin/python" -c "$$HA_VERSION_LINE"; \
	  cd tests/ha && COVERAGE_FILE="$(COVERAGE_DIR)/.coverage.$(1)" \
	    "$$env/bin/python" -m pytest $(PYTEST_PARALLEL) --cov="$(ROOT)/custom_components/mlmule" --cov-config="$(ROOT)/pyproject.toml" --cov-report=
endef

# the oldest Home Assistant we support
test-ha:
	$(call ha_tests,ha)

# the newest Home Assistant that has a matching test harness
test-ha-newest:
	$(call ha_tests,ha-newest)

# Coverage of custom_components/mlmule by every suite together (the core runs in all of them).
coverage:
	@env="$(HA_ENV)"; cd "$(COVERAGE_DIR)" && rm -f .coverage && \
	  "$$env/bin/python" -m coverage combine --rcfile="$(ROOT)/pyproject.toml" --keep -q \
	    .coverage.companion .coverage.ha .coverage.ha-newest && \
	  "$$env/bin/python" -m coverage report --rcfile="$(ROOT)/pyproject.toml" --skip-covered --sort=cover --fail-under=90 | tail -n 25

# mypy cannot follow setuptools' import finder, so it sees mlmule_core, mlmule_models and mlmule_world
# through directory links under build/ (gitignored).
lint:
	@ha="$(HA_ENV)"; companion="$(COMPANION_ENV)"; \
	  "$$ha/bin/ruff" check . && "$$ha/bin/ruff" format --check . && \
	  mkdir -p build/mypy-path && ln -sfn ../../custom_components/mlmule/core build/mypy-path/mlmule_core && \
	  ln -sfn ../../models build/mypy-path/mlmule_models && ln -sfn ../../world build/mypy-path/mlmule_world && \
	  MYPYPATH=build/mypy-path "$$ha/bin/mypy" custom_components/mlmule demo/mlmule_demo \
	    demo/custom_components/mlmule_replay_clock && \
	  MYPYPATH=build/mypy-path "$$companion/bin/mypy" --python-version 3.11 \
	    -p mule_companion -p mlmule_core -p mlmule_models -p mlmule_world

demo:
	@ha="$(HA_ENV)"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; \
	  cd demo && PYTHONPATH="$(ROOT)" exec "$$ha/bin/python" -m mlmule_demo

# a short demo (DEMO_MINUTES=3) checked through HA's API and in headless Chromium; its screenshots
# go to build/screenshots/
test-demo:
	@scripts/ensure-chromium.sh
	@ha="$(HA_ENV)"; export MLMULE_COMPANION_ENV="$(COMPANION_ENV)"; \
	  cd tests/demo && "$$ha/bin/python" -m pytest -q

# The README's and docs' screenshots, refreshed on purpose (tests never write into the checkout).
SCREENSHOTS = dashboard integration add-space space-device
docs-img: test-demo
	@for name in $(SCREENSHOTS); do cp build/screenshots/$$name.png docs/img/$$name.png; done
	@echo "copied $(SCREENSHOTS) from build/screenshots/ to docs/img/"

bench:
	@scripts/ensure-mosquitto.sh
	@env="$(COMPANION_ENV)"; mkdir -p bench/results; \
	  for script in bench/bench_*.py; do echo "== $$script"; "$$env/bin/python" "$$script"; done
	@env="$(HA_ENV)"; echo "== bench/ha (real Home Assistant core)"; cd bench/ha && "$$env/bin/python" -m pytest

# ML Mule against local, centralized, FedAvg, FedAsync and gossip (bench/results/README.md).
bench-learning:
	@env="$(COMPANION_ENV)"; cd bench && "$$env/bin/python" -m mlmule_bench run --jobs 2 && \
	  "$$env/bin/python" -m mlmule_bench flower && "$$env/bin/python" -m mlmule_bench scaling

# Weights against knowledge between homes of different model sizes and sensor sets
# (bench/results/README.md, knowledge.json).
bench-knowledge:
	@env="$(COMPANION_ENV)"; cd bench && "$$env/bin/python" -m mlmule_bench.knowledge --jobs 2

lock:
	scripts/lock.sh ha
	scripts/lock.sh ha-newest
	scripts/lock.sh companion

clean-envs:
	rm -rf "$${MLMULE_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/mlmule}/venvs"
