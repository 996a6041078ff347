# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# A virtual environment is created in .venv; torch==2.13.0 (CPU) is installed only when
# the environment has no torch yet (install a CUDA torch into .venv first to use a GPU).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hooked-mllm-installed
PYTEST_ARGS ?=

.PHONY: demo test install docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hooked-mllm demo --out reports/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

docs: $(STAMP)
	$(VENV)/bin/hooked-mllm hooks --markdown > docs/hook_points.md

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) reports .pytest_cache
