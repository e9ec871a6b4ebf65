.DEFAULT_GOAL := help
PY ?= .venv/bin/python
PROTOS := $(wildcard proto/sentiflow/v1/*.proto)
CLIENT := clients/python
# The torch build, by its PyTorch wheel index: cpu unless asked otherwise, e.g.
# `make install TORCH=cu130` for CUDA 13.0 (README, "CPU or CUDA torch").
TORCH ?= cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/$(TORCH)
# Every install takes the exact tested versions (pyproject.toml holds ranges).
PIP_INSTALL = $(PY) -m pip install -q -c constraints.txt
# Prints the pip options that add TORCH_INDEX_URL, or nothing when that index does not
# answer within 5 s (machines that reach only PyPI or a mirror): pip then takes torch
# from its configured indexes and find-links at once, instead of retrying an
# unreachable host for up to half an hour.
TORCH_PIP_OPTIONS = python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)' \
	'$(TORCH_INDEX_URL)' 2>/dev/null && echo '--extra-index-url $(TORCH_INDEX_URL)' \
	|| echo 'note: $(TORCH_INDEX_URL) did not answer; torch comes from the configured indexes' >&2

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

STAMP := .venv/.installed

$(STAMP): pyproject.toml constraints.txt $(CLIENT)/pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	@# torch first, with its build's index beside PyPI: the local version (2.13.0+cpu)
	@# sorts above PyPI's plain 2.13.0, which on Linux is the multi-GB CUDA build.
	$(PIP_INSTALL) torch $$($(TORCH_PIP_OPTIONS))
	$(PIP_INSTALL) -e $(CLIENT)
	$(PIP_INSTALL) -e '.[dev,bootstrap]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install sentiflow with its dev tools (TORCH=cpu|cu130|...)

torch-pip-options:  ## the pip options that pick the torch build (TORCH_INDEX_URL when it answers)
	@$(TORCH_PIP_OPTIONS)

constraints:  ## rewrite constraints.txt from what .venv has installed (the tested set)
	@{ echo '# The exact versions sentiflow is tested with: pip install -c constraints.txt ...'; \
	  echo '# Written by `make constraints` from the development environment. Local build'; \
	  echo '# tags are dropped (torch==2.13.0, not +cpu): the torch index picks the build.'; \
	  $(PY) -m pip freeze --all --exclude-editable \
	    | grep -v -i -E '^(pip|sentiflow|sentiflow-client)==' \
	    | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; \
	} > constraints.txt

# command-or-file:Debian package: what the browser tests run.
SYSTEM_TOOLS := chromium:chromium chromedriver:chromium-driver prometheus:prometheus promtool:prometheus

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

GENERATED := $(CLIENT)/sentiflow_client/v1

proto: $(STAMP)  ## regenerate the client's sentiflow_client.v1 from proto/
	rm -rf build/proto && mkdir -p build/proto
	PATH=$(dir $(PY)):$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=build/proto \
	  --grpc_python_out=build/proto --mypy_out=build/proto --mypy_grpc_out=build/proto $(PROTOS)
	$(PY) $(CLIENT)/copy_generated.py build/proto/sentiflow/v1 $(GENERATED)
	@# The descriptor set for Kafka UIs and Connect; its bytes follow the order of the files.
	$(PY) -m grpc_tools.protoc -Iproto --include_imports --descriptor_set_out=$(GENERATED)/sentiflow.desc $(sort $(PROTOS))

proto-check: proto  ## fail when the committed generated code is stale
	git diff --exit-code -- $(GENERATED) || (echo "generated code is stale: run 'make proto' and commit" && exit 1)
	test -z "$$(git status --porcelain -- $(GENERATED))" || (echo "untracked generated files: run 'make proto' and commit" && exit 1)

lint: $(STAMP)  ## ruff, mypy and the architecture contracts (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(dir $(PY))lint-imports

test: $(STAMP)  ## the whole test suite (starts its own broker and Redis)
	$(PY) -m pytest -q

check: install proto-check lint test  ## set up, then everything CI checks

.PHONY: help install torch-pip-options constraints system-deps demo up proto proto-check lint test check
