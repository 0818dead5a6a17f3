# Two commands for a newcomer (see README): `make demo` and `make test`.
# Both create .venv/ in the repo root if missing and install the project into it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where glibc < 2.39 (tfx 1.21's ml-metadata / TFDV wheels need 2.39), the venv's Python runs under
# Debian 13's loader and libraries kept here (tools/glibc_shim.sh; nothing happens on glibc >= 2.39).
SHIM := .glibc-shim
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: install demo test bench clean

$(STAMP): setup.py requirements.lock tools/glibc_shim.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@sh tools/glibc_shim.sh $(PYTHON) $(VENV) $(SHIM)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet --prefer-binary -c requirements.lock -e ".[test,torch,deploy]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) pipeline.py --runner=DirectRunner

test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests

# Every benchmark but bench/demo.py (two full demo runs); each ends with one JSON line.
bench: install
	$(PY) bench/codec.py
	$(PY) bench/ingest.py
	$(PY) bench/train.py
	$(PY) bench/evaluator.py
	$(PY) bench/models.py
	$(PY) bench/bottom_up.py
	$(PY) bench/serve.py
	$(PY) bench/deploy.py
	$(PY) bench/people.py

clean:
	rm -rf $(VENV) $(SHIM) build *.egg-info .pytest_cache
