# The README's two commands: `make run` and `make test`. Each installs into .venv first
# when pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
PORT ?= 8000
DEMO ?= --size 160 --iterations 100

.PHONY: run demo test

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

# The whole service on this machine: SQLite in ./data, a private Redis, the web server and one worker.
run: $(INSTALLED)
	$(VENV)/bin/impasto up --port $(PORT)

# One picture from the command line, no service.
demo: $(INSTALLED)
	$(VENV)/bin/impasto stylize tests/data/tubingen.jpg tests/data/starry_night.jpg -o out.png $(DEMO)
	@echo "wrote out.png"

test: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest
