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

demo: install  ## convert, train, evaluate and export the synthetic demo, then diagnose a fresh recording
	$(PY) -m ecg_tfx.train --flagfile=pipelines/$(PIPELINE).flags \
		--data_dir=$(WORKSPACE)/tfrecords/$(PIPELINE) --run_dir=$(WORKSPACE)/runs/$(PIPELINE)
	$(PY) -m ecg_tfx.make_sample --condition=atrial_fibrillation --output=$(WORKSPACE)/samples/af
	$(PY) -m ecg_tfx.predict --model=$(WORKSPACE)/runs/$(PIPELINE)/export/ecg $(WORKSPACE)/samples/af.hea

test: install  ## the whole test suite (CI runs exactly this)
	$(PY) -m ruff check ecg_tfx tests
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check ecg_tfx tests
	$(PY) -m ruff format --check ecg_tfx tests

bench: install  ## measured ratios (conversion, input pipeline, precision, export, serving) -> bench/results.md
	$(PY) bench/run.py

clean:
	rm -rf $(WORKSPACE)
