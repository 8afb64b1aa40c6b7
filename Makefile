# The two commands a new user needs: `make demo` and `make test`.
# Each creates .venv and installs the project (editable, with test extras) when missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench clean-venv browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned: the CUDA builds (they run on the CPU too).
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo --config configs/demo.yaml

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# tests/test_pages_in_browser.py opens the pages in Chromium. Install Debian's best-effort when it is missing
# (only as root with apt-get); this step never fails the build: without a browser that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser test"; \
	    { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium >/dev/null; } \
	      || echo "could not install chromium: the browser test will skip"; \
	  else \
	    echo "no chromium (and no apt-get as root to install it): the browser test will skip"; \
	  fi; \
	}; true

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
