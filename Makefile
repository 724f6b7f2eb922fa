# The README's two commands. Each does its own set-up first:
# a virtual environment in .venv, torch==2.13.0 only where torch is missing (that exact pin
# installs a CPU build from a local file; other specs pull gigabytes of CUDA wheels), then
# the project itself with its test extra (the sc, atlas and plot extras and the test tools);
# reinstalled when the dependencies or the version change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pyrovae-installed

.PHONY: run test setup lint docs clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml pyrovae/__init__.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) experiments/quickstart.py

# two worker processes (pytest-xdist), each file on one of them (a module's fixtures made once), one thread each
# (tests/conftest.py): most of the suite is Python and process start-up, which a second core halves; the files of
# long tests first (tests/conftest.py: LONG_FILES), in collection order
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The documentation site, warnings as errors (every page read afresh), into docs/_build/html; the tutorials run
# (their outputs are cached in docs/_build/.jupyter_cache until their code changes).
docs: $(STAMP)
	$(PY) -c "import myst_nb" 2>/dev/null || $(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m sphinx -W --keep-going -E -b html docs docs/_build/html

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build
