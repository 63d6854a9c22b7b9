# The two commands a fresh machine needs:  make demo   and   make test
# Both create .venv when it is missing and install abkit (with its dev tools) into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit lint typecheck proto analysis-sql bench serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/abkit demo

test: install lint typecheck
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check abkit tests migrations
	$(BIN)/ruff format --check abkit tests migrations

typecheck: install
	$(BIN)/mypy

proto: install
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
		$$(cd proto && find . -name '*.proto' | sed 's|^\./||')

analysis-sql: install
	$(BIN)/python -m abkit.store.analysis analysis

bench: install
	$(BIN)/python tests/benchmarks/bench_assign.py
	$(BIN)/python tests/benchmarks/bench_analysis.py

serve: install
	$(BIN)/abkit serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache abkit-demo.db*
