# affectlab: `make demo` and `make test` do all the set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data/fer2013
DEMO ?= runs/demo
# Tests and the demo never reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup setup-ray setup-bench demo test test-fast bench bench-ingest bench-pipeline bench-train bench-peers bench-scale captions enhance clean

setup: $(STAMP)

# torch/torchvision first, pinned: these two releases install from local disk; any other
# version is a multi-GB download.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup-ray: setup
	$(BIN)/pip install -q -e '.[ray]'

setup-bench: setup
	$(BIN)/pip install -q -e '.[bench]'

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ray"

# The main job end to end on the embedded synthetic faces (not a benchmark), offline.
demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/pipeline synth --out $(DEMO)/synth --per-class 40 --seed 0
	$(BIN)/pipeline ingest $(DEMO)/synth --layout imagefolder --dataset synth --out manifests/demo
	$(BIN)/pipeline stats manifests/demo_train.parquet manifests/demo_val.parquet manifests/demo_test.parquet
	$(BIN)/pipeline stats manifests/demo_train.parquet --preset 2

# Convenience targets named by the design card; override IN/OUT for your own manifests.
IN ?= manifests/fer_train.parquet
captions: setup
	$(BIN)/pipeline caption --in $(IN) --out $(basename $(IN))_captions.parquet

enhance: setup
	$(BIN)/pipeline enhance --in $(IN) --out $(basename $(IN))_enhanced.parquet --sr bicubic --color gray2rgb

bench-ingest: setup
	$(PY) benchmarks/bench_ingest.py --data $(SHARED)

bench: bench-ingest

clean:
	rm -rf $(DEMO) manifests/*.parquet
