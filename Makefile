# Two entry points for a fresh clone: `make demo` and `make test`.
# Each builds .venv first (once, and again when pyproject.toml or the lock changes),
# with exactly the versions in the lock, hashes checked.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock.txt

.PHONY: demo test test-latest browser-check lock lint format bench bench-compare soak lab serve clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Refresh the lock: the newest versions pyproject.toml allows, for every Python it allows.
# Run it after changing a dependency, then `make test` and commit both files.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
		--generate-hashes --upgrade --quiet -o $(LOCK)

# JupyterLab in headless Chromium: a learner's wrong answers, the phone, a kernel restart.
# Needs Debian's chromium (Playwright's own browser download is not used); skips without it.
browser-check: $(STAMP)
	$(BIN)/python tests/browser/check_lab.py

# Not part of CI's gate: the suite against the newest allowed versions, in a throwaway venv.
test-latest:
	$(PYTHON) scripts/test_latest.py

demo: $(STAMP)
	$(BIN)/relaylab demo

# -n auto: two pytest-xdist workers per CPU; --dist loadgroup keeps each notebook on one
# worker (tests/conftest.py draws the groups). RELAYLAB_TIME_SCALE=4 widens the time bounds.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n auto --dist loadgroup --nbval-lax --nbval-current-env tests notebooks

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-compare: $(STAMP)
	$(BIN)/python bench/side_by_side.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Jupyter refuses to start as root (common in containers) unless given --allow-root.
lab: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
		echo "make lab: running as root, so JupyterLab starts with --allow-root"; \
		$(BIN)/jupyter lab --allow-root notebooks/; \
	else \
		$(BIN)/jupyter lab notebooks/; \
	fi

serve: $(STAMP)
	$(BIN)/relaylab serve --step tracking

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
