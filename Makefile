# `make demo` and `make test` each create .venv when missing, install with constraints.txt, and run.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,vision,report,demo,onnx,hf,lightning,tensorboard]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m acdc.demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) runs
