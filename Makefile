# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The docs extra is installed only when `make docs` first needs it, so `make test` and `make demo` stay
# as quick from a fresh clone as before.
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint docs fmt clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/watcher demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check watcher tests
	$(VENV)/bin/ruff format --check watcher tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# --strict turns every warning into an error: a link to a missing page or anchor fails the build.
# NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner (see docs/development.md).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

fmt: $(STAMP)
	$(VENV)/bin/ruff format watcher tests
	$(VENV)/bin/ruff check --fix watcher tests

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
