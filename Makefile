# The README's two commands: `make run` and `make test`. Each installs into .venv first
# when pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
DEMO ?= --size 160 --iterations 100

.PHONY: run test

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

run: $(INSTALLED)
	$(VENV)/bin/impasto stylize tests/data/tubingen.jpg tests/data/starry_night.jpg -o out.png $(DEMO)
	@echo "wrote out.png"

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest
