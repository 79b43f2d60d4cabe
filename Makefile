# The few commands a newcomer needs. Everything runs in a virtualenv made from this repository's files.
# Two tested stacks: STACK=pinned (default; constraints.txt, TF 2.17, s3:// works) and STACK=current
# (constraints-current.txt: the newest TensorFlow, as a plain `pip install` and Colab get it).
STACK ?= pinned
ifeq ($(STACK),current)
VENV ?= .venv-current
WORKSPACE ?= workspace/current
else
VENV ?= .venv
WORKSPACE ?= workspace
endif
CONSTRAINTS := $(if $(filter current,$(STACK)),constraints-current.txt,constraints.txt)
PY := $(VENV)/bin/python
PIPELINE ?= synthetic_quick
# pytest-xdist processes: serially the suite keeps about 1.2 of 2 cores busy (subprocesses, TF start-up, Python).
# Measured on 2 cores: with 3 workers the pinned suite took 19.6 min against 12.5 with 2 (fresh-clone CI, 38a2c76).
TEST_WORKERS ?= 2
# The stack is installed by uv: the same versions as pip from the same constraints, in 1.5 min with bytecode compiled
# against pip's 3 (pinned stack, 2 cores, 2026-12-07). uv reads no pip.conf: behind a package mirror set there, set
# UV_INDEX_URL, or install with pip: make ... INSTALL='$(PY) -m pip install'.
INSTALL ?= $(VENV)/bin/uv pip install --python $(PY) --compile-bytecode

.PHONY: install demo test suite lint bench bench-precision clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) uv
	$(INSTALL) -q -c $(CONSTRAINTS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install  ## convert, train, evaluate and export the synthetic demo, then diagnose a fresh recording
	$(PY) -m ecg_tfx.train --flagfile=pipelines/$(PIPELINE).flags \
		--data_dir=$(WORKSPACE)/tfrecords/$(PIPELINE) --run_dir=$(WORKSPACE)/runs/$(PIPELINE)
	$(PY) -m ecg_tfx.make_sample --condition=atrial_fibrillation --output=$(WORKSPACE)/samples/af
	$(PY) -m ecg_tfx.predict --model=$(WORKSPACE)/runs/$(PIPELINE)/export/ecg $(WORKSPACE)/samples/af.hea

test:  ## the whole suite on both stacks (CI runs exactly this)
	$(MAKE) suite
	$(MAKE) suite STACK=current

suite: lint  ## lint and the whole suite on one stack (on STACK=current the s3:// tests skip: they need TF 2.16-2.17)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

lint: install  ## ruff's checks (pyproject.toml); the code is formatted by hand at 120 columns, not by `ruff format`
	$(PY) -m ruff check ecg_tfx tests

bench: install  ## measured ratios (conversion, input pipeline, precision, export, serving) -> bench/results.md
	$(PY) bench/run.py
	$(MAKE) bench-precision STACK=current

bench-precision: install  ## the precision section alone -> bench/$(STACK)/results.md
	$(PY) bench/run.py --only=precision --out=bench/$(STACK)

clean:
	rm -rf $(WORKSPACE)
