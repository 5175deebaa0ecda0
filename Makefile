# Gridfort developer entry points. `make demo` and `make test` are the quick start.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint proto proto-check bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found (Gridfort needs Python 3.11)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,detection]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridfort demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(TEST_ARGS)

lint: $(STAMP) proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

PROTOS := $(wildcard proto/gridfort/v1/*.proto)

proto: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --mypy_out=proto \
		--grpc_python_out=proto --mypy_grpc_out=proto $(PROTOS)

# Regenerate into a scratch dir and fail if the committed code drifted.
proto-check: $(STAMP)
	@rm -rf .proto-check && mkdir -p .proto-check
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=.proto-check --mypy_out=.proto-check \
		--grpc_python_out=.proto-check --mypy_grpc_out=.proto-check $(PROTOS)
	@diff -r -x __init__.py -x py.typed -x '*.proto' -x __pycache__ .proto-check/gridfort proto/gridfort \
		|| { echo "error: generated code drifted from proto/*.proto: run 'make proto' and commit"; rm -rf .proto-check; exit 1; }
	@rm -rf .proto-check && echo "proto: generated code matches the .proto sources"

bench: $(STAMP)
	$(BIN)/gridfort bench ingest --json benchmarks/results/ingest.json

clean:
	rm -rf $(VENV) .proto-check .pytest_cache .mypy_cache .ruff_cache
