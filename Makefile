# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# A virtual environment is created in .venv; torch==2.13.0 (CPU) is installed only when
# the environment has no torch yet (install a CUDA torch into .venv first to use a GPU).
# Every other package is installed at the release pinned in requirements/lock.txt (pip constraints),
# so the two commands give the environment the suite passed with on any day; `make lock` refreshes
# the lock from the newest releases, `make test CONSTRAINTS=` installs from pyproject's ranges alone.
# `make test-latest` checks the newest upstream releases in a separate environment (.venv-latest)
# and prints one line per family that drifts.
# `make test-sae` runs the sparse-autoencoder tests (tests/sae) in their own environment (.venv-sae: the
# `sae-test` extra, SAELens with the transformer-lens<4 it requires, locked by requirements/lock-sae.txt);
# `make lock-sae` refreshes that lock.
# `make docs` adds the docs extra (MkDocs) to .venv, executes the tutorials (the SAE tutorial in .venv-sae,
# which it sets up when missing), regenerates the generated pages and builds the site into site/ with
# warnings as errors.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hooked-mllm-installed
DOCS_STAMP := $(VENV)/.hooked-mllm-docs-installed
PYTEST_ARGS ?=
CONSTRAINTS ?= requirements/lock.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
TORCH := torch==2.13.0
LATEST := .venv-latest
# what the newest-release tier runs: the architecture conformance suite and the peers' parity checks
LATEST_TESTS := tests/architectures tests/test_compat.py tests/test_nnsight_habits.py tests/test_tl_parity.py

# the SAE tier: SAELens requires transformer-lens<4, the dev extra's parity tests >=4.3, so it has its own venv
SAE_VENV := .venv-sae
SAE_PY := $(SAE_VENV)/bin/python
SAE_STAMP := $(SAE_VENV)/.hooked-mllm-installed
SAE_CONSTRAINTS ?= requirements/lock-sae.txt
SAE_TESTS := tests/sae

.PHONY: demo test test-sae test-latest install notebooks docs bench lock lock-sae clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet $(PIP_C) -e ".[dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install --quiet $(PIP_C) -e ".[dev,docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hooked-mllm demo --out reports/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

$(SAE_STAMP): pyproject.toml $(SAE_CONSTRAINTS)
	test -x $(SAE_PY) || $(PYTHON) -m venv $(SAE_VENV)
	$(SAE_PY) -c "import torch" 2>/dev/null || $(SAE_PY) -m pip install --quiet "$(TORCH)"
	$(SAE_PY) -m pip install --quiet $(if $(SAE_CONSTRAINTS),-c $(SAE_CONSTRAINTS)) -e ".[sae-test]"
	touch $(SAE_STAMP)

test-sae: $(SAE_STAMP)
	HF_HUB_OFFLINE=1 $(SAE_PY) -m pytest -q $(SAE_TESTS) $(PYTEST_ARGS)


# the tutorials, executed top to bottom (a broken cell fails the build) into docs/notebooks/ for the site;
# the SAE tutorials import sae_lens (transformer-lens<4), so they run with .venv-sae's jupytext and kernel
# (tests/notebook_runner.py's SAE_NOTEBOOKS names the same files; tests/test_notebooks.py checks they agree)
SAE_NOTEBOOKS := notebooks/06_sparse_autoencoders.py
notebooks: $(DOCS_STAMP) $(SAE_STAMP)
	mkdir -p docs/notebooks
	for source in notebooks/[0-9]*.py; do \
	  case " $(SAE_NOTEBOOKS) " in *" $$source "*) bin=$(SAE_VENV)/bin;; *) bin=$(VENV)/bin;; esac; \
	  HF_HUB_OFFLINE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $$bin/jupytext --to ipynb --execute "$$source" \
	    -o "docs/notebooks/$$(basename "$$source" .py).ipynb" || exit 1; \
	done

docs: $(DOCS_STAMP) notebooks
	HF_HUB_OFFLINE=1 $(VENV)/bin/hooked-mllm hooks --markdown > docs/hook_points.md.tmp
	mv docs/hook_points.md.tmp docs/hook_points.md
	HF_HUB_OFFLINE=1 $(PY) -m hooked_mllm.architectures.table docs/architectures.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# The newest releases the registry has of every dependency (torch stays the CPU build above: newer
# torch releases here are CUDA builds of several GB; LATEST_TORCH=torch takes the newest anyway),
# past pyproject's upper bounds, in a fresh .venv-latest; one line per family that drifts.
LATEST_TORCH ?= $(TORCH)
UPSTREAMS := transformers nnsight transformer-lens accelerate huggingface-hub tokenizers safetensors
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet "$(LATEST_TORCH)"
	$(LATEST)/bin/python -m pip install --quiet -e ".[dev]"
	$(LATEST)/bin/python -m pip install --quiet --upgrade $(UPSTREAMS)
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python .ci/latest.py --out reports/latest.xml -- $(LATEST_TESTS)

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet "$(TORCH)"
	.venv-lock/bin/python -m pip install --quiet -e ".[dev,docs]"
	{ echo "# Every package of the dev, test and docs environment at the release the suite passed with"; \
	  echo "# (CPython 3.11, Linux x86_64). torch is left out: the Makefile installs it only when missing."; \
	  echo "# Made by \`make lock\`; see requirements/README.md."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)[=-]'; \
	} > requirements/lock.txt.tmp
	mv requirements/lock.txt.tmp requirements/lock.txt
	rm -rf .venv-lock

lock-sae:
	rm -rf .venv-sae-lock
	$(PYTHON) -m venv .venv-sae-lock
	.venv-sae-lock/bin/python -m pip install --quiet "$(TORCH)"
	.venv-sae-lock/bin/python -m pip install --quiet -e ".[sae-test]"
	{ echo "# Every package of the SAE test environment (.venv-sae: the sae-test extra) at the release its"; \
	  echo "# tests passed with (CPython 3.11, Linux x86_64). torch is left out: installed only when missing."; \
	  echo "# Made by \`make lock-sae\`; see requirements/README.md."; \
	  .venv-sae-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)[=-]'; \
	} > requirements/lock-sae.txt.tmp
	mv requirements/lock-sae.txt.tmp requirements/lock-sae.txt
	rm -rf .venv-sae-lock

clean:
	rm -rf $(VENV) $(SAE_VENV) $(LATEST) reports site .pytest_cache
