# One command each: `make install`, `make test`, `make run`. Everything lands in .venv and var/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_FLAGS ?= --find-links /opt/wheels

.PHONY: install test run model clean

install: $(STAMP) model

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The demo model (synthetic data, not for clinical use) is built once, deterministically.
model: $(STAMP)
	$(BIN)/dermatriage model build-demo --if-missing

test: install
	$(BIN)/python -m pytest

run: install
	$(BIN)/dermatriage model card

clean:
	rm -rf $(VENV) var .pytest_cache
