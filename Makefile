PY ?= python3
PIP ?= $(PY) -m pip

install:
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-embedded.txt

run: install
	$(PY) distill.py --resume  # a second `make run` continues (or re-evaluates) the same run

test: install
	$(PIP) install -r requirements-test.txt
	$(PY) -m pytest -q tests

.PHONY: install run test
