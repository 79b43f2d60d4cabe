# The few commands a newcomer needs. Everything runs in a virtualenv made from this repository's files.
VENV ?= .venv
PY := $(VENV)/bin/python
WORKSPACE ?= workspace
PIPELINE ?= synthetic_quick

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## convert the synthetic default and summarise what was written
	$(PY) -m ecg_tfx.convert --output_dir=$(WORKSPACE)/tfrecords/synthetic

test: install  ## the whole test suite (CI runs exactly this)
	$(PY) -m ruff check ecg_tfx tests
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check ecg_tfx tests
	$(PY) -m ruff format --check ecg_tfx tests

clean:
	rm -rf $(WORKSPACE)
