# The two README commands: `make demo` (install + run the main job end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/adapter-retrievers demo --output demo-output $(PROGRESS)

test: $(STAMP)
	$(BIN)/ruff check adapter_retrievers tests benchmarks scripts cookbook/run_all.py
	HF_HUB_OFFLINE=1 $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check adapter_retrievers tests benchmarks scripts cookbook/run_all.py
