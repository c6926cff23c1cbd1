# tolclip: `make train` and `make test` do everything on a fresh clone (they install first).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOLCLIP := $(VENV)/bin/tolclip
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install build-shards train eval eval-suite random-openclip test test-heavy test-browser test-ray test-fast lint format sweep-text-types sweep-text-types-real hparams-search notebooks bench bench-train bench-shards bench-decode bench-dedup bench-eval bench-predict clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install tolclip with test extras

train: $(STAMP) ## generate the synthetic tree of life, train the tiny CLIP, print zero-shot results (ARGS= for Hydra overrides)
	$(TOLCLIP) train $(ARGS)

eval: $(STAMP) ## zero-shot at every rank for a checkpoint: make eval ARGS="ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt"
	$(TOLCLIP) eval $(ARGS)

# ViT-B/32 by default: on a 2-core CPU the suite's B/16 row takes about half an hour.
SUITE_MODELS ?= trained,random_openclip_b32
SUITE_TASKS ?= shared_butterflies,shared_tiny_imagenet,shared_mushrooms

eval-suite: $(STAMP) random-openclip ## benchmark table: models x tasks (zero-shot, 1/5-shot, linear probe, ranks, t-SNE); SUITE_MODELS= SUITE_TASKS=
	rm -rf logs/eval-suite
	$(TOLCLIP) eval-suite -m suite/model=$(SUITE_MODELS) suite/task=$(SUITE_TASKS) hydra.sweep.dir=logs/eval-suite wandb.enabled=true $(ARGS)
	$(TOLCLIP) report --suite logs/eval-suite --wandb

random-openclip: $(STAMP) ## write random open_clip ViT-B/16 and B/32 release folders into data/checkpoints (no-skill references)
	$(PY) scripts/make_random_openclip.py data/checkpoints/random-openclip-vit-b16 --model ViT-B-16-quickgelu
	$(PY) scripts/make_random_openclip.py data/checkpoints/random-openclip-vit-b32 --model ViT-B-32-quickgelu

build-shards: $(STAMP) ## build one shard set from all of ../shared/data/sources into data/shared_sources, replacing an earlier build there (ARGS= for overrides)
	$(TOLCLIP) build-shards --config-name build/shared_sources build.overwrite=true $(ARGS)

test: $(STAMP) ## run the test suite (all but the heavy, browser and Ray tests: under 10 minutes on 2 cores)
	$(PY) -m pytest -q -m "not heavy and not browser and not ray" $(ARGS)

test-browser: $(STAMP) ## the demo page in headless Chromium (apt-get install chromium); screenshot in logs/test-artifacts
	$(PY) -m pytest -q -m browser $(ARGS)

# Ray is an optional extra: installed here only when missing, so a second run starts at once.
test-ray: $(STAMP) ## the Ray executor tests (build.executor=ray) on one local Ray; installs the [ray] extra first
	@$(PY) -c "import ray" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check -e ".[test,ray]"
	$(PY) -m pytest -q -m ray $(ARGS)

test-heavy: $(STAMP) ## the heavy tests: the default experiment learning, the eval-suite multirun, a 2-rank DDP run
	$(PY) -m pytest -q -m heavy $(ARGS)

test-fast: $(STAMP) ## tests not marked slow
	$(PY) -m pytest -q -m "not slow and not heavy and not browser and not ray" $(ARGS)

lint: $(STAMP) ## ruff, ruff format --check, the import-linter layers contract, functions <= 60 lines
	$(VENV)/bin/ruff check src tests scripts notebooks
	$(VENV)/bin/ruff format --check src tests scripts notebooks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/check_function_length.py src

format: $(STAMP) ## ruff format + import sort
	$(VENV)/bin/ruff check --fix --select I src tests scripts notebooks
	$(VENV)/bin/ruff format src tests scripts notebooks

TEXT_TYPES ?= com,sci,taxon,sci_com,taxon_com,mixed

sweep-text-types: $(STAMP) ## text-type ablation: train on each text type (Hydra multirun), print the table
	$(TOLCLIP) train -m experiment=text_type data.text_type=$(TEXT_TYPES) hydra.sweep.dir=logs/sweep-text-types $(ARGS)
	$(TOLCLIP) report logs/sweep-text-types

hparams-search: $(STAMP) ## hyperparameter search with Optuna (configs/hparams_search/optuna.yaml): best values in the sweep folder's optimization_results.yaml (ARGS= for overrides)
	$(TOLCLIP) train -m hparams_search=optuna $(ARGS)

# Seconds one notebook cell may run (nbmake's unit; a notebook's metadata.execution.timeout overrides it).
NB_TIMEOUT ?= 600

notebooks: $(STAMP) ## run every notebook in notebooks/ top to bottom (nbmake; the committed files keep no outputs)
	$(PY) -m pytest -q --nbmake --nbmake-timeout=$(NB_TIMEOUT) notebooks/ $(ARGS)

REAL_SEEDS ?= 0

sweep-text-types-real: $(STAMP) ## the ablation on real photos (../shared/data): shards with 15 species held out, one model per text type (REAL_SEEDS=0,1 for more seeds), the table
	test -f data/shared_holdout/catalog.parquet || $(TOLCLIP) build-shards --config-name build/shared_holdout
	$(TOLCLIP) train -m experiment=text_type_real data.text_type=$(TEXT_TYPES) seed=$(REAL_SEEDS) hydra.sweep.dir=logs/sweep-text-types-real $(ARGS)
	$(TOLCLIP) report logs/sweep-text-types-real

bench: bench-train bench-shards bench-decode bench-dedup bench-eval bench-predict ## all benchmarks

bench-train: $(STAMP) ## training samples/s: tolclip vs open_clip (caption-length and full-context tokens); end to end from shards vs model only; feature-cache accumulation vs one big batch
	$(PY) scripts/bench_train.py $(ARGS)
	$(PY) scripts/bench_train.py --min-words 75 --max-words 75 $(ARGS)
	$(PY) scripts/bench_train_e2e.py $(E2E_ARGS)
	$(PY) scripts/bench_accumulation.py $(ACCUM_ARGS)

bench-shards: $(STAMP) ## shard builder images/s vs Pillow-only decode/resize/encode, per worker count, and CPU per image (driver vs workers and scan stage): 224-px butterflies; mushroom photos at 64 px (reduced-scale decode)
	$(PY) scripts/bench_shards.py $(ARGS)
	$(PY) scripts/bench_shards.py --root ../shared/data/sources/mushrooms/images/train --images 400 --size 64 $(ARGS)

bench-dedup: $(STAMP) ## near-duplicate index: µs per image as it grows to 1M kept images (docs/curation-at-scale.md)
	$(PY) scripts/bench_dedup.py $(ARGS)

DECODE_SOURCES ?= ../shared/data/sources
bench-decode: $(STAMP) ## reduced-scale JPEG decoding: images/s vs full decode, PSNR and pHash change (../shared/data)
	$(PY) scripts/bench_decode.py $(DECODE_SOURCES)/camera-trap-edge --size 224
	$(PY) scripts/bench_decode.py $(DECODE_SOURCES)/mushrooms/images/train --size 64 112 224
	$(PY) scripts/bench_decode.py $(DECODE_SOURCES)/mushrooms/images/train --upscale-to 1600 --limit 200 --rounds 3 --size 64 112 224

bench-eval: $(STAMP) random-openclip ## feature extraction images/s: tolclip vs open_clip on the same checkpoint and images
	$(PY) scripts/bench_eval.py --images 64 $(ARGS)

bench-predict: $(STAMP) random-openclip ## `tolclip predict` vs pybioclip's `bioclip predict` images/s (whole commands, CPU, same model/images/labels); index build time for 10,000 taxa
	$(PY) scripts/bench_predict.py $(ARGS)
	$(PY) scripts/bench_rank_grouping.py

# Only what tolclip generates: data/ also holds users' weights (data/checkpoints) and benchmark data.
clean: ## remove generated data and logs (keeps .venv)
	rm -rf data/synthetic data/.synthetic.lock data/shared_sources data/checkpoints/random-openclip-* \
		logs/* .cache outputs multirun build
