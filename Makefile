# labkit — every target bootstraps .venv itself (idempotent: a second run skips the install).
#   make lab [PROFILE=smoke|workshop|full]   run every notebook with papermill, then write the report
#   make test                                the whole test suite (unit, loaders, notebooks in smoke)
#   make jupyter                             JupyterLab on the kit's kernel
#   make student                             student + instructor copies of every notebook
#   make lock [LOCK_ARGS=--upgrade]          regenerate requirements.txt (the lock) from pyproject.toml's ranges
SHELL := /bin/bash
PYTHON ?= python3
PROFILE ?= workshop
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.labkit-installed
PYTEST_ARGS ?=

# Keep all Jupyter / IPython / matplotlib / Hugging Face state inside the kit folder, and stay offline.
STATE := $(CURDIR)/.labkit/state
export LABKIT_HOME ?= $(CURDIR)/.labkit
export JUPYTER_CONFIG_DIR := $(STATE)/jupyter/config
export JUPYTER_DATA_DIR := $(STATE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(STATE)/jupyter/runtime
export IPYTHONDIR := $(STATE)/ipython
export MPLCONFIGDIR := $(STATE)/matplotlib
export HF_HOME := $(STATE)/huggingface
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: lab test jupyter student lint install lock clean state

install: $(STAMP)

state:
	@mkdir -p $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(MPLCONFIGDIR) $(HF_HOME)

$(STAMP): requirements.txt pyproject.toml | state
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "labkit needs Python >= 3.11, found " + sys.version.split()[0] + "; run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "labkit: installing the pinned environment into $(VENV) (a few minutes, once)"
	set -o pipefail; $(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt -e . 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; } \
		|| { echo "labkit: install failed. If pip found no torch==...+cpu: the CPU build of torch comes from the PyTorch" \
		          "CPU index; run: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install" >&2; exit 1; }
	$(BIN)/python -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)" >/dev/null
	@touch $(STAMP)
	@echo "labkit: environment ready in $(VENV)"

# The lock: pip-tools (in its own venv under .labkit/, never in .venv) resolves pyproject.toml's dependencies + the
# test extra for this Python (3.11, Linux), keeping requirements.txt's current pins wherever the ranges allow them
# (LOCK_ARGS=--upgrade: newest everywhere; LOCK_ARGS="-P torch" for one package). Same pip configuration as
# `make install`, so the torch +cpu wheel must be reachable (local find-links or PIP_EXTRA_INDEX_URL).
LOCK_VENV := .labkit/lock-venv
LOCK_ARGS ?=
define LOCK_HEADER
# The lock: every package of the labkit environment at an exact version, for Python 3.11 on Linux (x86_64).
# Generated from pyproject.toml's ranges (dependencies + the `test` extra) by pip-tools: regenerate with `make lock`.
# The one source of truth for pip, make and conda (environment.yml reads this file).
# torch is pinned HERE, in the same file as peft/transformers, as the CPU build (+cpu): torch==2.13.0 from PyPI on
# Linux is the CUDA build and brings triton and ~20 nvidia-*/cuda-* packages (GBs). The +cpu wheel comes from the
# pip configuration (a local find-links folder) or the PyTorch CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu pip install -r requirements.txt -e .
endef
export LOCK_HEADER

lock:
	@set -o pipefail; test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/python -m pip install --disable-pip-version-check -q pip-tools==7.6.2 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
	set -o pipefail; $(LOCK_VENV)/bin/pip-compile pyproject.toml --extra test --strip-extras --allow-unsafe \
		--no-emit-find-links --no-emit-index-url --no-header --quiet $(LOCK_ARGS) --output-file requirements.txt 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@{ printf '%s\n' "$$LOCK_HEADER"; cat requirements.txt; } > requirements.txt.tmp && mv requirements.txt.tmp requirements.txt
	@echo "labkit: requirements.txt locked ($$(grep -c '^[A-Za-z0-9].*==' requirements.txt) packages)"

lab: $(STAMP) state
	$(BIN)/labkit run --profile $(PROFILE)
	$(BIN)/labkit report --profile $(PROFILE)

test: $(STAMP) state
	$(BIN)/ruff check labkit tests benchmarks data_scripts notebooks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Loopback only, with Jupyter's generated token (printed in the URL); as root (the usual case in a container)
# JupyterLab refuses to start without --allow-root, so pass it when the uid is 0.
jupyter: $(STAMP) state
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root)

student: $(STAMP) state
	$(BIN)/labkit student

lint: $(STAMP) state
	$(BIN)/ruff check labkit tests benchmarks data_scripts notebooks

clean:
	rm -rf runs notebooks/student notebooks/instructor
