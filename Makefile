# labkit — every target bootstraps .venv itself (idempotent: a second run skips the install).
#   make lab [PROFILE=smoke|workshop|full]   run every notebook with papermill, then write the report
#   make test                                the whole test suite (unit, loaders, notebooks in smoke)
#   make jupyter                             JupyterLab on the kit's kernel
#   make student                             student + instructor copies of every notebook
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

.PHONY: lab test jupyter student lint install clean state

install: $(STAMP)

state:
	@mkdir -p $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(MPLCONFIGDIR) $(HF_HOME)

$(STAMP): requirements.txt pyproject.toml | state
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "labkit needs Python >= 3.11, found " + sys.version.split()[0] + "; run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "labkit: installing the pinned environment into $(VENV) (a few minutes, once)"
	set -o pipefail; $(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt -e . 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)" >/dev/null
	@touch $(STAMP)
	@echo "labkit: environment ready in $(VENV)"

lab: $(STAMP) state
	$(BIN)/labkit run --profile $(PROFILE)
	$(BIN)/labkit report --profile $(PROFILE)

test: $(STAMP) state
	$(BIN)/ruff check labkit tests benchmarks data_scripts notebooks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

jupyter: $(STAMP) state
	$(BIN)/jupyter lab --notebook-dir=notebooks

student: $(STAMP) state
	$(BIN)/labkit student

lint: $(STAMP) state
	$(BIN)/ruff check labkit tests benchmarks data_scripts notebooks

clean:
	rm -rf runs notebooks/student notebooks/instructor
