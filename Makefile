# One command to set up and run the main job, one to set up and run the tests.
#   make demo   venv + install, then `trtbuild run` on the embedded model (CPU), ends with the report path
#   make test   venv + install, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch that pip finds on local disk; on a GPU host: make setup TORCH=torch==2.9.1
TORCH  ?= torch==2.13.0
# Test files run on this many pytest-xdist workers: one more than the 2-core CI machine has cores, since
# much of the suite waits on server processes starting and stopping (-n 3: 395 s vs -n 2: 510 s, same load)
TEST_WORKERS ?= 3

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "lm-eval>=0.4.13,<0.5"  # its needed deps are in [dev] (pyproject.toml)
	touch $@

demo: setup
	$(BIN)/trtbuild run

test: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

bench: setup
	$(BIN)/pytest -q bench --benchmark-only

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .benchmarks
