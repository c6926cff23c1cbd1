#!/usr/bin/env bash
# The GPU check to run when a session is lent a device machine (it never runs in CI):
#   .whl/  wheels the device image lacks (hydra-core, omegaconf, antlr4 sdist, webdataset, braceexpand,
#          open_clip_torch, ftfy, wcwidth), downloaded for Python 3.12 as the device README says;
#   .gpudata/sources/butterflies-100/{test,names.csv}  a copy of the shared test split (not committed).
# Each step's log goes to $OUT/<step>.log; the tail is printed.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/* \
    >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, timm, lightning; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
BUTTERFLIES=$PWD/.gpudata/sources/butterflies-100/test

step() {
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "-- $name rc=$rc in $((SECONDS - start)) s"
    tail -n "${TAIL:-14}" "$OUT/$name.log"
}

step tests timeout 110 python3 -m pytest -q -x -m "not slow" -p no:cacheprovider tests/test_towers.py \
    tests/test_loss.py tests/test_checkpoints.py tests/test_tokenizer.py tests/test_clip_module.py
step train timeout 150 python3 -m tolclip train trainer=gpu logger=csv trainer.max_epochs=3 data.num_workers=6 \
    callbacks.zero_shot.text_types=[taxon]
step bench_train timeout 80 python3 scripts/bench_train.py --model vit_b16 --batch 128 --device cuda --steps 5 \
    --rounds 5
TAIL=20 step bench_eval timeout 120 python3 scripts/bench_eval.py --device cuda --root "$BUTTERFLIES" \
    --images 500 --batch-size 125 --workers 0 8 --rounds 3
step suite timeout 100 python3 -m tolclip eval-suite suite/model=random_openclip_b16 suite/task=shared_butterflies \
    "shared_data=$PWD/.gpudata" task.resolve=false task.label_type=sci suite.num_workers=8
