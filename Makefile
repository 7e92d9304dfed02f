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
.PHONY: setup run demo test test-rust test-python test-package wheel develop model lint services fixtures bench

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
	cargo fmt --manifest-path examples/consumer/Cargo.toml --check
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
	$(PY) tests/reference/make_quant_fixture.py $(REF)
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

# The bindings as users install them: `maturin build` makes the wheel, which goes into a
# fresh virtualenv that borrows torch, numpy and pytest from the dev environment through a
# .pth file (no second 4.7 GB torch), and the suite runs against that installed package.
WHEELS := $(PY_TARGET)/wheels
WHEEL_VENV := $(CACHE)/venv-wheel
wheel: setup
	rm -rf $(WHEELS)
	CARGO_TARGET_DIR=$(PY_TARGET) $(CURDIR)/.venv/bin/maturin build --release -i $(PY) -m partialconv-py/Cargo.toml --out $(WHEELS)

test-python: wheel
	rm -rf $(WHEEL_VENV)
	python3 -m venv $(WHEEL_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$$($(WHEEL_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/dev-env.pth"
	$(WHEEL_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-index $(WHEELS)/partialconv-*.whl
	cd partialconv-py/tests && CARGO_TARGET_DIR=$(PY_TARGET) PARTIALCONV_EXPECT_INSTALLED=$(WHEEL_VENV) \
		$(WHEEL_VENV)/bin/python -m pytest -q -p no:cacheprovider .

# An editable build into the dev environment, for working on the bindings.
develop: setup
	CARGO_TARGET_DIR=$(PY_TARGET) VIRTUAL_ENV=$(CURDIR)/.venv $(CURDIR)/.venv/bin/maturin develop --release -m partialconv-py/Cargo.toml

# The crates as crates.io gets them, and a project of its own built on them (docs/library.md).
test-package: setup
	scripts/package.sh

# `partialconv-model`'s int8 file, from the fp16 training output models/default.safetensors.
model:
	cargo run --release -p partialconv-cli --no-default-features -- convert \
		models/default.safetensors partialconv-model/default.int8.safetensors --storage int8

# Each step's wall time goes to the log, for the CI budget (docs/benchmarks.md).
TEST_STEPS := lint test-rust test-python test-package
test:
	@for step in $(TEST_STEPS); do \
		start=$$(date +%s); $(MAKE) --no-print-directory $$step || exit 1; \
		echo "== make $$step: $$(( $$(date +%s) - start )) s"; \
	done

bench: setup
	cargo bench -p partialconv
