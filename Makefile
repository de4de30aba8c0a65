# The two set-up commands of the README:
#   make demo   creates .venv if missing, installs, runs the whole pipeline on the demo set
#   make test   creates/updates .venv and runs the test suite
# Both are idempotent: the install step runs again only when pyproject.toml or
# constraints.txt changed (stamp file .venv/.installed).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
# pytest arguments, e.g. make test PYTEST_ARGS="-m 'not slow'"
PYTEST_ARGS ?=

.PHONY: demo test venv lint clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# torch first and pinned, so no other (CUDA) build is ever resolved
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Exit code 5 (no test collected) fails the run: the whole suite collecting nothing is an
# accident. Only when a marker filter (-m) is given and legitimately selects none is it 0.
test: venv
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ] && [[ "$(PYTEST_ARGS)" == *"-m "* ]]; then \
		echo "pytest: the marker filter selected no tests (treated as success)"; exit 0; fi; \
	exit $$rc

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The main job, end to end on the built-in demo set and the embedded Triton server.
# Each stage is a file target: a second `make demo` reuses the data set, the trained runs and
# the exported models it already has, and only serves, compares and load-tests again. A changed
# demo-set generator (stainbench/data/demo.py) remakes the data set and everything after it;
# a changed recipe retrains its family. `make clean-demo` starts over.
REPO ?= model_repository
DEMO_DATA := $(DEMO_OUT)/data/paired.zarr
DATA_DONE := $(DEMO_OUT)/data/.done
FAMILIES := unet pix2pix cyclegan
RUNS := $(foreach f,$(FAMILIES),$(DEMO_OUT)/runs/$(f)/last.pt)
EXPORTED := $(REPO)/.demo_exported
SB := $(BIN)/stainbench

demo: venv $(EXPORTED)
	$(SB) export --check --repo $(REPO)
	$(SB) compare --val-set $(DEMO_DATA) --repo $(REPO) --baseline unet_demo \
		--concurrency 1,4 --window 1 --max-windows 5 --out $(DEMO_OUT)/compare
	$(SB) loadtest --repo $(REPO) --tiles $(DEMO_DATA) --users 4 --run-time 20s \
		--out $(DEMO_OUT)/loadtest
	@echo "demo finished: report in $(DEMO_OUT)/compare/report.md, models in $(REPO)/"

$(DATA_DONE): stainbench/data/demo.py | $(STAMP)
	$(SB) data demo $(DEMO_OUT)/data --force
	$(SB) data info $(DEMO_OUT)/data
	@touch $@

# A run directory that holds an unfinished run (no last.pt) is started afresh.
$(DEMO_OUT)/runs/%/last.pt: train/demo/%.yaml $(DATA_DONE) | $(STAMP)
	rm -rf $(DEMO_OUT)/runs/$*
	$(SB) train $< --data $(DEMO_DATA) --out $(DEMO_OUT)/runs/$*

$(EXPORTED): $(RUNS) | $(STAMP)
	$(SB) export $(foreach f,$(FAMILIES),$(DEMO_OUT)/runs/$(f)) \
		--repo $(REPO) --baselines $(DEMO_DATA) --force
	@touch $@

clean-demo:
	rm -rf $(DEMO_OUT) $(EXPORTED)
