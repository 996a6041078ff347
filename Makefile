# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# A virtual environment is created in .venv; torch==2.13.0 (CPU) is installed only when
# the environment has no torch yet (install a CUDA torch into .venv first to use a GPU).
# `make docs` adds the docs extra (MkDocs) to .venv, regenerates the generated pages and builds the site
# into site/ with warnings as errors.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hooked-mllm-installed
DOCS_STAMP := $(VENV)/.hooked-mllm-docs-installed
PYTEST_ARGS ?=

.PHONY: demo test install docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hooked-mllm demo --out reports/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

docs: $(DOCS_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hooked-mllm hooks --markdown > docs/hook_points.md.tmp
	mv docs/hook_points.md.tmp docs/hook_points.md
	HF_HUB_OFFLINE=1 $(PY) -m hooked_mllm.architectures.table docs/architectures.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) reports site .pytest_cache
