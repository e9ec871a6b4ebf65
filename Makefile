.DEFAULT_GOAL := help
PY ?= .venv/bin/python
PROTOS := $(wildcard proto/sentiflow/v1/*.proto)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install sentiflow with its dev tools
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

proto:  ## regenerate sentiflow/v1 from proto/
	PATH=$(dir $(PY)):$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
	  --mypy_out=. --mypy_grpc_out=. $(PROTOS)

proto-check: proto  ## fail when the committed generated code is stale
	git diff --exit-code -- sentiflow/v1 || (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	test -z "$$(git status --porcelain -- sentiflow/v1)" || (echo "untracked generated files: run 'make proto' and commit" && exit 1)

lint:  ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test:  ## the whole test suite (starts its own broker and Redis)
	$(PY) -m pytest -q

check: proto-check lint test  ## what CI runs

.PHONY: help install proto proto-check lint test check
