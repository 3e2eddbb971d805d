# Two entry points: `make demo` (the main job) and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo bench lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[test,metrics,deepspeed]"
	touch $(STAMP)

setup: $(STAMP)

# two workers, one thread each (two jobs that each take both cores run about 4x slower)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

demo: $(STAMP)
	$(BIN)/parauni demo --out outputs/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_conditioning.py

# the documentation site (mkdocs.yml) into site/; --strict: any warning (a broken link, a missing page) fails
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) outputs .pytest_cache site
