# make demo: serve the demo app; make test: lint and run the whole suite;
# make docs: build docs/ into docs/_build/html, every warning an error.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint docs demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The checkout's own folders (demo/, for development.ini's use = call:demo:main)
	# importable in this virtualenv, after the installed packages.
	echo '$(CURDIR)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/pyramid_pgstore_checkout.pth"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pyramid_pgstore pytest_pgstore

test: $(STAMP) lint
	.ci/need-postgres pgbouncer
	.ci/need-browser
	.ci/need-patroni
	$(BIN)/pytest -n 2

# Sphinx from the dev extra (its docs extra); -n: every cross reference resolves.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

# make bench: the session backends side by side (bench/README.rst); about 12
# minutes. make bench BENCH_ARGS=--quick: a smoke run under 2 minutes. Never part of test.
bench: $(STAMP)
	.ci/need-postgres
	bench/setup.sh $(VENV)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

demo: $(STAMP)
	.ci/need-postgres
	$(BIN)/python demo/serve.py development.ini

clean:
	rm -rf $(VENV) var *.egg-info docs/_build
