# Two commands do everything on a fresh machine:
#   make run    set up, build, and run the product
#   make test   set up, start the services the tests use, and run every test
#
# The Python environment (torch==2.11.0 from PyPI, whose libtorch the Rust crates link) is
# cached outside the clone; `.venv` and `.libtorch` link to it.

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/partialconv
VENV ?= $(CACHE)/venv
export CARGO_TARGET_DIR ?= $(CACHE)/target
PY := $(CURDIR)/.venv/bin/python
BIN := $(CARGO_TARGET_DIR)/release

# `make demo` fills docs/img/sample.jpg with the CLI.
.PHONY: setup run demo test test-rust test-python lint services fixtures bench

setup: .venv/.ready .libtorch

.venv/.ready: requirements-dev.txt
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@ln -sfn $(VENV) .venv
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

.libtorch: .venv/.ready
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .libtorch

# The web page and API on http://127.0.0.1:8080/ with the bundled model, SQLite history and a
# local image folder under ~/.cache/partialconv/server-data.
run: setup
	cargo build --release -p server-example -p partialconv-cli
	# Passive OpenMP threads: spinning ones steal the CPU from a fine-tune job's thread and
	# from the other workers between requests (docs/benchmarks.md).
	OMP_WAIT_POLICY=PASSIVE $(BIN)/server-example --data-dir $(CACHE)/server-data

# The CLI on the sample photo, without the server.
demo: setup
	cargo build --release -p partialconv-cli
	@mkdir -p out
	$(BIN)/partialconv predict --image docs/img/sample.jpg --mask docs/img/sample_mask.png --output out/sample_filled.png
	@echo "input: docs/img/sample.jpg  mask: docs/img/sample_mask.png  result: out/sample_filled.png"

PY_TARGET := $(CACHE)/target-py

lint: setup services
	cargo fmt --all --check
	cargo fmt --manifest-path partialconv-py/Cargo.toml --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings
	# The default features are what `make run` and most users build.
	cargo clippy -p server-example -p history-sink --all-targets -- -D warnings
	CARGO_TARGET_DIR=$(PY_TARGET) cargo clippy --release --manifest-path partialconv-py/Cargo.toml --all-targets -- -D warnings

services:
	scripts/services.sh

# Golden data from the independent PyTorch references, made fresh for every test run.
REF := $(CARGO_TARGET_DIR)/reference
fixtures: setup
	@mkdir -p $(REF)
	$(PY) tests/reference/make_checkpoints.py $(REF)
	$(PY) tests/reference/make_vgg_fixture.py $(REF)
	$(PY) tests/reference/make_loss_fixture.py $(REF)
	$(PY) tests/reference/make_pth_fixtures.py $(REF)/pth

export PARTIALCONV_REFERENCE_DIR := $(REF)
export HISTORY_TEST_MYSQL ?= mysql://root@127.0.0.1:3306
export HISTORY_TEST_TANSU ?= $(CACHE)/tools/bin/tansu
export HISTORY_TEST_MOTO ?= $(CACHE)/venv-moto/bin/moto_server

test-rust: setup services fixtures
	cargo test --workspace --all-features
	# And with the default features (SQLite history, local images), as `make run` builds them.
	cargo test -p server-example -p history-sink

# The bindings, built into the same environment, against the same libtorch.
test-python: setup
	CARGO_TARGET_DIR=$(PY_TARGET) VIRTUAL_ENV=$(CURDIR)/.venv $(CURDIR)/.venv/bin/maturin develop --release -m partialconv-py/Cargo.toml
	CARGO_TARGET_DIR=$(PY_TARGET) $(PY) -m pytest -q partialconv-py/tests

test: lint test-rust test-python

bench: setup
	cargo bench -p partialconv
