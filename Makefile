# make demo: serve the demo app; make test: lint and run the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[testing]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	.ci/need-postgres
	$(BIN)/pytest -n 2

demo: $(STAMP)
	.ci/need-postgres
	$(BIN)/python -m pyramid_pgstore.demo.serve development.ini

clean:
	rm -rf $(VENV) var *.egg-info
