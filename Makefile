# One command each: `make install`, `make test`, `make run`. Everything lands in .venv and var/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP_FLAGS ?= --find-links /opt/wheels

.PHONY: install test run model demo-model migrate register tools clean help

install: $(STAMP) tools model migrate register ## set up .venv, the tools, the model in service and the database

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -c constraints.txt -e '.[build,test]'
	touch $(STAMP)

# The model `make run` serves, built once, deterministically: the real-image model where
# ../shared/data is present (10-14 minutes on 2 cores), else the synthetic demo model.
model: $(STAMP) ## build the model `make run` serves (real-image where ../shared/data is, else demo)
	$(BIN)/dermatriage model build --if-missing

# The synthetic demo model (not for clinical use): the tests need it (about 10 minutes).
demo-model: $(STAMP) ## build the synthetic demo model the tests use
	$(BIN)/dermatriage model build-demo --if-missing

# Debian's docker-compose validates docker-compose.yml in the tests (no engine needed);
# Debian's Chromium is the browser the Playwright test drives.
tools: ## install Debian's docker-compose and Chromium (compose validation, browser tests)
	@command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } \
	  || echo "warning: could not install docker-compose; the compose test will fail"
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "warning: could not install chromium; the browser test will be skipped"

migrate: $(STAMP) ## apply the database migrations
	$(BIN)/dermatriage db upgrade

# The model just built goes into the registry; while there is no champion it becomes the
# champion (recorded as the installation's override), so a fresh clone serves it at once.
register: model migrate ## register the model in service; the champion if there is none yet
	$(BIN)/dermatriage model register --in-service --bootstrap

test: install demo-model ## set up everything, then run the whole test suite (.ci/run)
	$(BIN)/python -m pytest

run: install ## set up everything, then serve web + worker on 127.0.0.1:PORT (default 5000)
	$(BIN)/dermatriage run --port $${PORT:-5000}

clean: ## remove .venv, var/ (database, objects, models) and caches
	rm -rf $(VENV) var .pytest_cache

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
