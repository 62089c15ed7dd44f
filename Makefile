# The environment: the active one (a virtualenv or conda), else .venv here, made on first use, which sees the
# packages already installed for python3 (--system-site-packages: a torch installed first is reused). A stock
# Debian 12 / Ubuntu 24.04 python3 refuses `pip install` outside an environment (PEP 668).
ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
PY ?= python3
VENV :=
else
PY ?= .venv/bin/python
VENV := .venv/bin/python
endif
PIP ?= $(PY) -m pip

install: $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-embedded.txt

.venv/bin/python:
	python3 -m venv --system-site-packages .venv || { rm -rf .venv; echo "error: python3 -m venv failed: install \
	the venv module (Debian / Ubuntu: apt install python3-venv) or activate an environment" >&2; exit 2; }

run: install
	$(PY) distill.py --resume  # a second `make run` continues (or re-evaluates) the same run

test: install
	$(PIP) install -r requirements-test.txt
	$(PY) -m pytest -q tests

.PHONY: install run test
