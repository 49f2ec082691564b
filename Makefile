# The two commands a newcomer runs: `make quickstart` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install quickstart test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/vlmtrain fit configs/quickstart.yaml training.overwrite_output_dir=true

# In CI (CI=true) the browser test is required, so chromium is installed first; elsewhere nothing is
# installed and that one test skips, saying how to run it.
test: install
	@case "$${CI:-}" in ""|0|false|False|FALSE|no) ;; *) bash tests/setup_chromium.sh ;; esac
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check vlmtrain tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
