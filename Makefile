# raindrops for Python: every set-up step lives here; README commands are `make demo` and `make test`.
# The venv's interpreter: the system's CPython when it can make a venv (distributions build it
# with PGO and LTO, as the servers raindrops measures run it), else the first python3 on PATH.
# A CPython built without them (pyenv's default) runs all Python code about 20% slower.
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && echo $(SYSTEM_PYTHON) || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
ZIG := $(PY) -m ziglang
LIBRARY := raindrops/libraindrops.so
ZIG_SOURCES := build.zig $(wildcard zig/*.zig)
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: build test test-skips-reset lint zig-test pytest dist bench loadtest demo clean

build: $(INSTALLED) $(LIBRARY)

$(PY):
	$(PYTHON) -m venv $(VENV)

# A pinned pip (a distribution's venv brings an old one, which cannot install into Python 3.12),
# build tools, then the project in editable mode with its pinned test, bench, loadtest and dist extras.
$(INSTALLED): pyproject.toml hatch_build.py tools/elfcheck.py | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check pip==24.3.1
	$(PY) -m pip install --quiet --disable-pip-version-check hatchling==1.33.0 ziglang==0.17.0
	@echo "raindrops: installing the project; its build compiles libraindrops.so with Zig (about 2 minutes on a machine's first build, seconds later)"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --editable '.[test,bench,loadtest,dist]'
	touch $@

$(LIBRARY): $(ZIG_SOURCES) | $(INSTALLED)
	$(ZIG) build -Doptimize=ReleaseFast --prefix zig-out
	cp zig-out/lib/libraindrops.so $@.tmp && mv -f $@.tmp $@  # a new inode: running processes keep the old one

# .test-skips collects one line per check skipped for a missing tool; pytest's summary shows them.
test: test-skips-reset build lint zig-test pytest
test: export RAINDROPS_KEEP_SKIP_LOG = 1

# Style is checked, not fixed: `ruff format .` and `python -m ziglang fmt zig build.zig` fix it.
lint: | $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(ZIG) fmt --check build.zig zig

test-skips-reset:
	rm -f .test-skips

# The host's tests, then the aarch64 ones under qemu-user (a missing qemu fails CI, else is a skip).
QEMU_SKIP := SKIP zig aarch64 tests: qemu-aarch64 not installed (Debian package qemu-user)
zig-test: | $(INSTALLED)
	$(ZIG) build test
	@if command -v qemu-aarch64 >/dev/null 2>&1; then \
		echo "$(ZIG) build test -Dtarget=aarch64-linux -fqemu"; \
		$(ZIG) build test -Dtarget=aarch64-linux -fqemu; \
	elif [ "$$CI" = true ]; then \
		echo "FAIL zig aarch64 tests: qemu-aarch64 not installed (Debian package qemu-user), required when CI=true" >&2; \
		exit 1; \
	else \
		echo "$(QEMU_SKIP)"; \
		echo "$(QEMU_SKIP)" >> .test-skips; \
	fi

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_counters.py
	$(PY) benchmarks/bench_listeners.py
	$(PY) benchmarks/bench_middleware.py
	$(PY) benchmarks/bench_asgi.py
	$(PY) benchmarks/bench_metrics.py

# Real gunicorn (sync and gthread) under locust; report in loadtests/results/. DURATION=S per variant.
loadtest: build
	$(PY) -m loadtests $(LOADTEST_ARGS)

DEMO_BIND ?= 127.0.0.1:8080
DEMO_WORKERS ?= 4
DEMO_ARGS ?=

# gunicorn with 4 workers serving examples.demo (an app wrapped in raindrops.Middleware).
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
		--config python:examples.demo_config $(DEMO_ARGS) examples.demo:app

# An sdist, then a wheel per architecture built from the unpacked sdist (proving it complete);
# Zig cross-compiles, so this one machine builds them all. Then the checks of what would be uploaded.
DIST_ARCHES := x86_64 aarch64
dist: build
	rm -rf dist build/sdist
	$(PY) -m build --no-isolation --sdist --outdir dist .
	mkdir -p build/sdist && tar -xzf dist/raindrops_stats-*.tar.gz -C build/sdist
	for arch in $(DIST_ARCHES); do \
		RAINDROPS_TARGET=$$arch $(PY) -m build --no-isolation --wheel --outdir dist build/sdist/raindrops_stats-* || exit 1; \
	done
	$(PY) -m twine check --strict dist/*
	$(PY) tools/elfcheck.py dist/*.whl
	for wheel in dist/*.whl; do $(VENV)/bin/auditwheel show $$wheel || exit 1; done
	@echo "the sdist, installed by pip with build isolation (hatchling and ziglang from the index):"
	rm -rf build/sdist-venv && $(PYTHON) -m venv build/sdist-venv
	build/sdist-venv/bin/python -m pip install --quiet --disable-pip-version-check dist/raindrops_stats-*.tar.gz
	cd build && sdist-venv/bin/python -c "import raindrops; r = raindrops.Raindrops(1); assert r.incr(0) == 1; print('sdist install ok:', raindrops.__file__)"

clean:
	rm -rf $(VENV) zig-out .zig-cache $(LIBRARY) build dist .pytest_cache .test-skips
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
