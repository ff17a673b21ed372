# The two commands of the README: `make demo` (main job) and `make test`.
PYTHON ?= python3
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import llava_jax, jax, flax, torch, transformers"
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/llava-jax demo --workdir workdir_demo

lint: $(STAMP)
	$(BIN)/ruff format --check llava_jax tests bench configs && $(BIN)/ruff check llava_jax tests bench configs

clean:
	rm -rf $(VENV) *.egg-info
