# Gridfort developer entry points. `make demo` and `make test` are the quick start.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-cluster test soak lint proto proto-check bench bench-nats bench-all clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found (Gridfort needs Python 3.11)"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,detection]"
	# The real OPA engine (v1.20.2, in-process via ctypes) as the second policy engine. Its
	# metadata asks for Python >= 3.14 but the wheel is plain ctypes and runs on 3.11.
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python "opa-golib-python-bindings==0.4.4"
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

bench-nats: $(STAMP)
	$(BIN)/gridfort bench ingest --transport nats --workers 1,2 --json benchmarks/results/ingest-nats.json

# Every benchmark, one after the other (each prints a table and writes its JSON).
bench-all: bench bench-nats $(STAMP)
	$(BIN)/gridfort bench policy --json benchmarks/results/policy.json
	$(BIN)/gridfort bench optimizer --json benchmarks/results/optimizer.json
	$(BIN)/gridfort bench fanout --json benchmarks/results/fanout.json
	$(BIN)/gridfort bench detector --json benchmarks/results/detector.json

demo-cluster: $(STAMP)
	$(BIN)/gridfort demo --transport nats --nats-cluster 3 $(DEMO_ARGS)

soak: $(STAMP)
	GRIDFORT_SOAK=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m soak $(TEST_ARGS)

clean:
	rm -rf $(VENV) .proto-check .pytest_cache .mypy_cache .ruff_cache
