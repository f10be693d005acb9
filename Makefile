# The two commands of README.md: `make demo` and `make test`. Both set everything up.
SHELL := /bin/bash
# The interpreter the virtualenv is made from: the first CPython 3.11 that can make one
# (venv and ensurepip), trying the system's own build first. Distribution builds are
# compiled with profile-guided and link-time optimisation; a source build without
# --enable-optimizations (pyenv's default) costs a group 6-11% more CPU per request
# (benches/HISTORY.md, "Fourteenth round"). `make PYTHON=/path/to/python3.11` (or PYTHON in
# the environment) overrides the choice.
PYTHON_CANDIDATES := /usr/bin/python3.11 python3.11 python3
PYTHON ?= $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(shell \
	$(p) -c 'import sys, venv, ensurepip; sys.exit(sys.implementation.name != "cpython" \
	or sys.version_info[:2] != (3, 11))' \
	>/dev/null 2>&1 && echo $(p))) python3)
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
CORE := $(VENV)/.core-built
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock

.PHONY: demo test setup build cargo-test pytest bench lint clean

demo: build
	$(PY) -m dropbear.demo

test: cargo-test pytest

setup: $(DEPS)

build: $(CORE)

# Pinned Python dependencies (requirements.lock) in a local virtualenv.
$(DEPS): requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	touch $@

# The Rust extension dropbear._core, in release mode, installed editable into the venv.
$(CORE): $(DEPS) $(RUST_SOURCES) pyproject.toml
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet
	touch $@

cargo-test:
	cargo test --workspace --quiet

pytest: build
	$(PY) -m pytest -q

bench: build
	$(PY) -m pytest benches -q --benchmark-enable --benchmark-columns=mean,median,ops,rounds

lint: $(DEPS)
	$(VENV)/bin/ruff check python tests benches
	cargo fmt --all -- --check

clean:
	rm -rf $(VENV) target python/dropbear/_core*.so .pytest_cache .benchmarks
