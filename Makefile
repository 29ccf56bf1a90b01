# raindrops for Python: every set-up step lives here; README commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ZIG := $(PY) -m ziglang
LIBRARY := raindrops/libraindrops.so
ZIG_SOURCES := build.zig $(wildcard zig/*.zig)
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: build test zig-test pytest bench loadtest demo clean

build: $(INSTALLED) $(LIBRARY)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build tools first, then the project in editable mode with its pinned test, bench and loadtest extras.
$(INSTALLED): pyproject.toml hatch_build.py | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check hatchling==1.33.0 ziglang==0.17.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --editable '.[test,bench,loadtest]'
	touch $@

$(LIBRARY): $(ZIG_SOURCES) | $(INSTALLED)
	$(ZIG) build -Doptimize=ReleaseFast --prefix zig-out
	cp zig-out/lib/libraindrops.so $@.tmp && mv -f $@.tmp $@  # a new inode: running processes keep the old one

test: build zig-test pytest

zig-test: | $(INSTALLED)
	$(ZIG) build test

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_counters.py
	$(PY) benchmarks/bench_listeners.py
	$(PY) benchmarks/bench_middleware.py

# Real gunicorn (sync and gthread) under locust; report in loadtests/results/. DURATION=S per variant.
loadtest: build
	$(PY) -m loadtests $(LOADTEST_ARGS)

DEMO_BIND ?= 127.0.0.1:8080
DEMO_WORKERS ?= 4
DEMO_ARGS ?=

# gunicorn with 4 workers serving raindrops.demo (an app wrapped in raindrops.Middleware).
demo: build
	@echo "raindrops demo on http://$(DEMO_BIND)/ (Ctrl-C stops it). Try:"
	@echo "  curl http://$(DEMO_BIND)/_raindrops                      raindrops' text format"
	@echo "  curl 'http://$(DEMO_BIND)/_raindrops?format=prometheus'  Prometheus"
	@echo "  curl 'http://$(DEMO_BIND)/_raindrops?format=json'        JSON"
	@echo "  curl 'http://$(DEMO_BIND)/slow?seconds=5' &              then watch calling rise"
	@echo "  curl 'http://$(DEMO_BIND)/stream?chunks=50&delay=0.1'    writing while it streams"
	@echo "  curl http://$(DEMO_BIND)/fail                            counts an error"
	@echo "  curl http://$(DEMO_BIND)/_raindrops/last_data_recv       time requests waited in the queue"
	@echo "  open http://$(DEMO_BIND)/watch/                          live dashboard of every listener"
	$(VENV)/bin/gunicorn --workers $(DEMO_WORKERS) --worker-class gthread --threads 4 --bind $(DEMO_BIND) --no-control-socket \
		--config python:raindrops.demo_config $(DEMO_ARGS) raindrops.demo:app

clean:
	rm -rf $(VENV) zig-out .zig-cache $(LIBRARY) build dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
