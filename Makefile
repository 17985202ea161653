# The two set-up-and-go commands of the README: `make run` and `make test`.
# Both create .venv, install the project into it, and install the Debian packages they need
# (when running as root with apt).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench sysdeps sysdeps-runtime

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

sysdeps-runtime:
	scripts/install-system-deps.sh --runtime

sysdeps:
	scripts/install-system-deps.sh

## Learn from the embedded synthetic speech stream for two minutes, then print a summary.
run: sysdeps-runtime $(STAMP)
	$(VENV)/bin/online-gim listen --duration 120

## The whole test suite (slow tests included).
test: sysdeps $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/online-gim bench --json
