# make demo / make test: both build .venv first, with the project installed in it (pip install -e .[test]: the pins
# of requirements.txt and requirements-test.txt, mulm_jax importable from any folder, the `mulm` command).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
# The development/CI mirror of the public corpora (see ../shared/data/README.md).
export MULM_DATA_MIRROR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: demo test test-slow lint walkthrough mutation venv chromium clean

venv: $(STAMP)

# Rebuilt whenever a requirements file or pyproject.toml is newer than the last install.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Assembles Tiny Shakespeare (on first use), trains nanoGPT's CPU recipe on it (running it again resumes or finds
# the run finished), shows a sample, then serves the model on http://127.0.0.1:8000 (OpenAI-compatible; the web
# lab at http://127.0.0.1:8000/; Ctrl-C stops).
demo: $(STAMP)
	$(PY) -m mulm_jax info --config configs/shakespeare_char.yaml
	$(PY) train.py --config configs/shakespeare_char.yaml --workdir runs/shakespeare
	$(PY) -m mulm_jax generate --checkpoint runs/shakespeare --prompt "ROMEO:" --seed 1
	$(PY) serve.py --checkpoint runs/shakespeare

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow"

# The web lab's browser tests (tests/api/test_lab_browser.py, run by `make test` when it is there) drive Debian's
# Chromium headless; this installs it when it is missing (as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m slow

# ruff's default rules over the package, the tests, the benches and the scripts (pyproject.toml [tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The walkthrough, notebooks/walkthrough.ipynb (the demo model's forward pass rebuilt step by step in numpy): trains
# runs/shakespeare as `make demo` does (resumed, or found finished), executes the notebook against it in place with
# its outputs kept, and renders it as docs/walkthrough.md, its code cells marked as tests/test_docs.py requires and
# its links made docs/'s. The preprocessor named on the command line runs after the execution: each cell's printed
# lines become one output. tests/test_walkthrough.py (make test-slow) executes it against a freshly trained run.
walkthrough: $(STAMP)
	$(PY) train.py --config configs/shakespeare_char.yaml --workdir runs/shakespeare --quiet
	MULM_WALKTHROUGH_RUN=runs/shakespeare $(PY) -m nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.record_timing=False \
		--NotebookExporter.preprocessors=nbconvert.preprocessors.CoalesceStreamsPreprocessor \
		notebooks/walkthrough.ipynb
	$(PY) -m nbconvert --to markdown --output-dir docs --output walkthrough notebooks/walkthrough.ipynb
	sed -i -e 's|^```python$$|```python norun: a cell of notebooks/walkthrough.ipynb, run in order by make walkthrough|' \
		-e 's|](\.\./docs/|](|g' docs/walkthrough.md

# mutmut over the core modules, each against its own tests (docs/mutation.md); one module: make mutation
# MODULES=positional. mutmut is a development tool, pinned apart in requirements-dev.txt.
mutation: $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) tests/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) .pytest_cache
