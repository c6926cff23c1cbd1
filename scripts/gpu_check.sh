#!/usr/bin/env bash
# The GPU check to run when a session is lent a device machine (it never runs in CI):
#   .whl/  wheels the device image lacks (hydra-core, omegaconf, antlr4 sdist, webdataset, braceexpand,
#          open_clip_torch, ftfy, wcwidth), downloaded for Python 3.12 as the device README says;
#   .gpudata/sources/butterflies-100/{test,names.csv}  a copy of the shared test split (not committed).
# Run it as `bash scripts/gpu_check.sh` with carry [".whl", ".gpudata"] and timeout_s 540.
# Steps run in order of importance, each under its own limit and all within DEADLINE_S seconds (default
# 480: about 8 minutes of device time); a step that no longer fits is skipped and says so. Each step's
# log is appended to $OUT/gpu_check.log (one file: the device returns at most 8); its tail is printed.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
DEADLINE_S=${DEADLINE_S:-480}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/* \
    >"$LOGS/pip.log" 2>&1 || { cat "$LOGS/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, timm, lightning; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
BUTTERFLIES=$PWD/.gpudata/sources/butterflies-100/test

# step NAME LIMIT_S COMMAND...: run COMMAND for at most LIMIT_S seconds, or what is left of DEADLINE_S.
step() {
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE_S - SECONDS))
    if ((left < 30)); then
        echo "== $name: SKIPPED, ${left} s left of DEADLINE_S=$DEADLINE_S"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "-- $name rc=$rc in $((SECONDS - start)) s$( ((rc == 124)) && echo ' (TIMED OUT)')"
    { echo "===== $name: $*"; cat "$LOGS/$name.log"; echo "----- rc=$rc"; } >>"$OUT/gpu_check.log"
    tail -n "${TAIL:-14}" "$LOGS/$name.log"
}

VIT_B16=(python3 scripts/bench_train.py --model vit_b16 --device cuda --steps 5 --rounds 5)

step tests 110 python3 -m pytest -q -x -m "not slow and not heavy" -p no:cacheprovider tests/test_towers.py \
    tests/test_loss.py tests/test_checkpoints.py tests/test_tokenizer.py tests/test_clip_module.py \
    tests/test_throughput.py
step train 150 python3 -m tolclip train trainer=gpu logger=csv trainer.max_epochs=3 data.num_workers=6 \
    callbacks.zero_shot.text_types=[taxon]
step bench_train 80 "${VIT_B16[@]}" --batch 128
# bf16 and torch.compile rows (issue 10): tolclip vs open_clip at the same batch, precision and compile
# flag, with MFU against the H200's dense bf16 peak; targets >= 1.1x open_clip in bf16, >= 40% MFU.
TAIL=24 step bench_train_bf16 270 "${VIT_B16[@]}" --batch 256 --settings bf16 bf16-compile
# The throughput options through Lightning on CUDA: compiled towers, patch dropout, fused AdamW, bf16.
step train_options 100 python3 -m tolclip train trainer=gpu logger=csv trainer.max_epochs=1 data.num_workers=6 \
    model.compile=true model.patch_dropout=0.5 callbacks.zero_shot.text_types=[taxon]
# End to end (issue 10): ViT-B/16 fed by the DataModule with 16 loader workers vs the same model on
# in-memory batches; target >= 0.9 (not yet run on a device).
TAIL=10 step bench_e2e 120 python3 scripts/bench_train_e2e.py --steps 10 --rounds 2 model=vit_b16 trainer=gpu \
    data.num_workers=16 data.batch_size=256
TAIL=20 step bench_eval 120 python3 scripts/bench_eval.py --device cuda --root "$BUTTERFLIES" \
    --images 500 --batch-size 125 --workers 0 8 --rounds 3
step suite 100 python3 -m tolclip eval-suite suite/model=random_openclip_b16 suite/task=shared_butterflies \
    "shared_data=$PWD/.gpudata" task.resolve=false task.label_type=sci suite.num_workers=8
echo "gpu_check done in $SECONDS s"
