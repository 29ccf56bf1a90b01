# raindrops for Python: every set-up step lives here; README commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ZIG := $(PY) -m ziglang
LIBRARY := raindrops/libraindrops.so
ZIG_SOURCES := build.zig $(wildcard zig/*.zig)
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: build test zig-test pytest bench clean

build: $(INSTALLED) $(LIBRARY)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build tools first, then the project in editable mode with its pinned test and bench extras.
$(INSTALLED): pyproject.toml hatch_build.py | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check hatchling==1.33.0 ziglang==0.17.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --editable '.[test,bench]'
	touch $@

$(LIBRARY): $(ZIG_SOURCES) | $(INSTALLED)
	$(ZIG) build -Doptimize=ReleaseFast --prefix zig-out
	cp zig-out/lib/libraindrops.so $@

test: build zig-test pytest

zig-test: | $(INSTALLED)
	$(ZIG) build test

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_counters.py

clean:
	rm -rf $(VENV) zig-out .zig-cache $(LIBRARY) build dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
