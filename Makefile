# The two commands a new user needs: `make demo` and `make test`.
# Each creates .venv and installs the project (editable, with test extras) when missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned: the CUDA builds (they run on the CPU too).
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# `make bench NAME=grounding_phantom` runs one benchmark (`make bench` lists them); TINY=1 for the smoke-sized run.
NAME ?=
TINY ?=
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	$(VENV)/bin/workbench bench $(if $(NAME),$(NAME),--list) $(if $(TINY),--tiny,)

clean-venv:
	rm -rf $(VENV)
