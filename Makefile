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

.PHONY: setup run demo test test-rust test-python lint fixtures bench

setup: .venv/.ready .libtorch

.venv/.ready: requirements-dev.txt
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@ln -sfn $(VENV) .venv
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

.libtorch: .venv/.ready
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .libtorch

run: setup
	cargo build --release -p partialconv
	$(MAKE) --no-print-directory demo

demo:
	@mkdir -p out
	$(BIN)/partialconv predict --image docs/img/sample.jpg --mask docs/img/sample_mask.png --output out/sample_filled.png
	@echo "input: docs/img/sample.jpg  mask: docs/img/sample_mask.png  result: out/sample_filled.png"

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Golden data from the independent PyTorch reference, made fresh for every test run.
fixtures: setup
	@mkdir -p $(CARGO_TARGET_DIR)/reference
	$(PY) tests/reference/make_checkpoints.py $(CARGO_TARGET_DIR)/reference

test-rust: fixtures
	PARTIALCONV_REFERENCE_DIR=$(CARGO_TARGET_DIR)/reference cargo test --workspace --all-targets

test: lint test-rust

bench: setup
	cargo bench -p partialconv
