# The two commands of the README: `make demo` (main job) and `make test`.
PYTHON ?= python3
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint clean

# The install goes through uv when it can be had (parallel downloads, unpacking and byte-compiling:
# about 35 s on the 2-core box, against 95 s for pip), and falls back to pip. uv reads no pip
# configuration, so the find-links directory and constraint file that pip would use are passed on.
PIP_SETTING = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^$(1)='\(.*\)'$$/\1/p")
UV_OPTIONS = $(foreach d,$(or $(PIP_FIND_LINKS),$(call PIP_SETTING,global.find-links)),--find-links $(d)) \
	$(foreach f,$(or $(PIP_CONSTRAINT),$(call PIP_SETTING,global.constraint)),--constraint $(f))

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	( $(BIN)/pip install -q --disable-pip-version-check uv 2>&1 | grep -v "^WARNING: Location"; \
	  $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode $(UV_OPTIONS) -e '.[test]' ) \
	  || $(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import llava_jax, jax, flax, torch, transformers"
	touch $(STAMP)

# Huge pages for malloc in the test processes and every process they start (as `llava-jax train` and
# `demo` set for themselves, llava_jax/runtime/hugepages.py): about 4% less time on the 2-core box.
# A setting of the caller's for that tunable wins.
TEST_TUNABLES = $(if $(findstring glibc.malloc.hugetlb,$(GLIBC_TUNABLES)),$(GLIBC_TUNABLES),$(if $(GLIBC_TUNABLES),$(GLIBC_TUNABLES):)glibc.malloc.hugetlb=1)

test: $(STAMP)
	HF_HUB_OFFLINE=1 GLIBC_TUNABLES="$(TEST_TUNABLES)" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 tests

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/llava-jax demo --workdir workdir_demo

lint: $(STAMP)
	$(BIN)/ruff format --check llava_jax tests bench configs && $(BIN)/ruff check llava_jax tests bench configs

clean:
	rm -rf $(VENV) *.egg-info
