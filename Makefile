# The two commands a fresh machine needs:  make demo   and   make test
# Both create .venv when it is missing and install abkit (with its dev tools) into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit lint typecheck docs proto analysis-sql bench bench-tools serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# abkit/core/_speedups.c is compiled by the install (a C compiler and OpenSSL's headers).
$(STAMP): $(BIN)/python pyproject.toml abkit/core/_speedups.c
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/abkit demo

test: install lint typecheck docs
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check abkit tests migrations
	$(BIN)/ruff format --check abkit tests migrations

typecheck: install
	$(BIN)/mypy

# The documentation site: --strict fails on a broken link or anchor, or a page left out of the nav.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

proto: install
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
		$$(cd proto && find . -name '*.proto' | sed 's|^\./||')

analysis-sql: install
	$(BIN)/python -m abkit.store.analysis analysis

# Benchmarks (BENCHMARKS.md): PostgreSQL at ABKIT_TEST_POSTGRES_URL (default: the local server),
# the Go load generator tests/benchmarks/loadgen (built with Debian's golang-go and
# golang-golang-x-net-dev, installed here when missing and apt-get can) and a separate virtualenv
# with the peers abkit is compared with -- never runtime dependencies.
# The whole run takes about two and a half hours, most of it loading 60M rows for bench_scale
# and again for bench_incremental.
BENCH_VENV  := .bench-venv
BENCH_PEERS := growthbook==4.0.0 planout==0.6.0 six==1.17.0 py-spy==0.4.3

$(BENCH_VENV)/.installed-stamp:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet $(BENCH_PEERS)
	touch $@

LOADGEN := $(BENCH_VENV)/loadgen

$(LOADGEN): tests/benchmarks/loadgen/main.go
	@{ command -v go >/dev/null && [ -d /usr/share/gocode/src/golang.org/x/net/http2 ]; } || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-golang-x-net-dev; \
		else \
			echo "go is missing: sudo apt-get install golang-go golang-golang-x-net-dev" >&2; exit 1; \
		fi; }
	cd tests/benchmarks/loadgen && GO111MODULE=off GOPATH=/usr/share/gocode \
		GOCACHE=$(abspath $(BENCH_VENV))/go-cache go build -o $(abspath $(LOADGEN)) .

bench-tools: $(BENCH_VENV)/.installed-stamp $(LOADGEN)

bench: install bench-tools
	$(BIN)/python tests/benchmarks/bench_assign.py
	$(BIN)/python tests/benchmarks/bench_peers.py
	$(BIN)/python tests/benchmarks/bench_local_client.py
	$(BIN)/python tests/benchmarks/bench_grpc.py
	$(BIN)/python tests/benchmarks/bench_journal.py
	$(BIN)/python tests/benchmarks/bench_async_loss.py
	$(BIN)/python tests/benchmarks/bench_ingest.py
	$(BIN)/python tests/benchmarks/bench_analysis.py
	$(BIN)/python tests/benchmarks/bench_scale.py
	$(BIN)/python tests/benchmarks/bench_incremental.py

serve: install
	$(BIN)/abkit serve

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache abkit-demo.db*
