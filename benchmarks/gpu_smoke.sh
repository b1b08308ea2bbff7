#!/usr/bin/env bash
# GPU smoke test, for a machine with one or more NVIDIA GPUs: one run that checks what the CPU machine cannot.
#
#   bash benchmarks/gpu_smoke.sh            (from the repository root, in an environment with toolkit[dev] installed)
#
# Checks, each printed as PASS/FAIL/SKIP with its time; every output under $SMOKE_DIR (default: a new temp folder):
#   fit_1gpu                 fit + test on one GPU: result.json "done", Lightning used the GPU
#   bf16                     the same in bf16-mixed precision
#   channels_last_compile    channels_last weights/inputs and torch.compile of the backbone
#   ddp_2gpu                 one run, DDP on 2 GPUs (skipped with fewer than 2)
#   slots                    an ablation of 2 runs on the runner's GPU slots (different GPUs when there are 2+)
#   devices_map              --devices 0 under an inherited CUDA_VISIBLE_DEVICES=<last GPU> lands on that GPU
#   gpu_safety_tests         tests/test_gpu_safety.py (CUDA-free warm parent, a port per DDP run, device mapping)
# Exit status: the number of failed checks. Nothing is downloaded: tiny timm models on the bundled digits.
set -u
cd "$(dirname "$0")/.."
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d -t toolkit-gpu-smoke-XXXX)}
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1
failed=0

NGPU=$(PYTORCH_NVML_BASED_CUDA_CHECK=1 python -c "import torch; print(torch.cuda.device_count())")
echo "gpu smoke: $NGPU GPU(s) visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); outputs in $SMOKE_DIR"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/  /'
if [ "$NGPU" -lt 1 ]; then
    echo "SKIP  everything: no GPU visible"
    exit 0
fi

QUICK=(--config configs/digits.yaml --trainer.max_epochs 1 --trainer.limit_train_batches 8
    --trainer.limit_val_batches 2 --trainer.limit_test_batches 2 --trainer.enable_progress_bar false
    --test_after_fit true --trainer.accelerator gpu)

check() { # check NAME COMMAND...: PASS when it exits 0; its output goes to $SMOKE_DIR/NAME.log
    local name=$1
    shift
    local start=$SECONDS
    if "$@" >"$SMOKE_DIR/$name.log" 2>&1; then
        echo "PASS  $name ($((SECONDS - start)) s)"
    else
        echo "FAIL  $name ($((SECONDS - start)) s): $(tail -n 1 "$SMOKE_DIR/$name.log")"
        failed=$((failed + 1))
    fi
}

fit_gpu() { # fit_gpu NAME EXTRA...: a quick fit on the GPU; done, tested, and Lightning said it used the GPU
    local name=$1
    shift
    toolkit fit "${QUICK[@]}" --trainer.default_root_dir "$SMOKE_DIR/$name" "$@" || return 1
    grep -q "GPU available: True (cuda), used: True" "$SMOKE_DIR/$name.log" || return 1
    python -c "import json, sys; r = json.load(open(sys.argv[1])); assert r['status'] == 'done', r; \
assert 'test/acc' in r['metrics'], r" "$SMOKE_DIR/$name/result.json"
}

check fit_1gpu fit_gpu fit_1gpu --trainer.devices 1
check bf16 fit_gpu bf16 --trainer.devices 1 --trainer.precision bf16-mixed
check channels_last_compile fit_gpu channels_last_compile --trainer.devices 1 --model.channels_last true \
    --model.compile true
if [ "$NGPU" -ge 2 ]; then
    check ddp_2gpu fit_gpu ddp_2gpu --trainer.devices 2 --trainer.strategy ddp
else
    echo "SKIP  ddp_2gpu: needs 2 GPUs"
fi

cat >"$SMOKE_DIR/spec.yaml" <<EOF
name: gpu-smoke
base: [$PWD/configs/digits.yaml]
overrides: {trainer.max_epochs: 1, trainer.limit_train_batches: 8, trainer.limit_val_batches: 2,
            trainer.limit_test_batches: 2, trainer.enable_progress_bar: false}
seeds: [0]
baseline: full
variants: {full: {}, small-lr: {model.optimizer.init_args.lr: 0.0003}}
metrics: [test/acc]
EOF

pinned() { # pinned ROOT: the distinct CUDA_VISIBLE_DEVICES the runs' slot lines name
    grep -ho "# slot [0-9]*: CUDA_VISIBLE_DEVICES=[^ ]*" "$1"/gpu-smoke/*/seed0/run.log | sed 's/.*=//' | sort -u
}

slots() {
    toolkit ablate run "$SMOKE_DIR/spec.yaml" --root "$SMOKE_DIR/slots" --workers 2 || return 1
    local want=$((NGPU >= 2 ? 2 : 1))
    [ "$(pinned "$SMOKE_DIR/slots" | wc -l)" -eq "$want" ]
}
check slots slots

devices_map() {
    local last
    last=$(python -c "import os; v = os.environ.get('CUDA_VISIBLE_DEVICES'); \
print((v.split(',') if v else [str(i) for i in range($NGPU)])[-1])")
    CUDA_VISIBLE_DEVICES=$last toolkit ablate run "$SMOKE_DIR/spec.yaml" --root "$SMOKE_DIR/mapped" --devices 0 ||
        return 1
    [ "$(pinned "$SMOKE_DIR/mapped")" = "$last" ]
}
check devices_map devices_map

check gpu_safety_tests python -m pytest -q -p no:cacheprovider tests/test_gpu_safety.py

echo "gpu smoke: $failed check(s) failed; logs in $SMOKE_DIR"
exit "$failed"
