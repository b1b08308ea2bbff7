#!/usr/bin/env bash
# GPU smoke test, for a machine with one or more NVIDIA GPUs: what the CPU machine cannot check, proved by the facts
# each run records from inside itself (result.json "facts": the GPU's UUID, precision, the autocast dtype its
# training forward saw, compiled graphs and recompilations, the DDP world size), not by exit codes or log lines.
#
#   bash benchmarks/gpu_smoke.sh            (from the repository root, in an environment with toolkit-ablate[dev])
#
# Checks (one table at the end; every output under $SMOKE_DIR, default: a new temp folder):
#   fit_32          one GPU, 32-true: the run's device is a GPU UUID, no autocast, world size 1
#   bf16            bf16-mixed: the training forward ran under bfloat16 autocast (skipped where bf16 is unsupported)
#   fp16            16-mixed: float16 autocast
#   compile         channels_last + torch.compile: graphs were compiled (not eager), recompilations counted
#   compile_lpft    compile through LP->FT's unfreeze: compiled, and how often it recompiled at the unfreeze
#   ddp_all         one run, DDP over every visible GPU: world size = the GPU count (skipped with 1 GPU)
#   slots           one run per visible GPU through the runner's slots: the runs' GPU UUIDs are every visible GPU,
#                   each run on its slot's GPU
#   two_ddp         with >= 4 GPUs, two 2-GPU DDP runs at once (each its own MASTER_PORT): both world size 2, on
#                   disjoint GPUs, overlapping in time
#   devices_map     --devices 0 under an inherited CUDA_VISIBLE_DEVICES=<last GPU> runs on that GPU's UUID
#   gpu_safety      tests/test_gpu_safety.py (CUDA-free warm parent, a port per DDP run, device mapping)
#   no_leftovers    at the end no process started here holds GPU memory
# Exit status: the number of failed checks. Nothing is downloaded: tiny timm models on the bundled digits.
# shellcheck disable=SC2317  # the checks are functions that `check` calls
set -u
cd "$(dirname "$0")/.." || exit 1
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d -t toolkit-gpu-smoke-XXXX)}
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1
failed=0
TABLE="$SMOKE_DIR/table.tsv"
printf 'check\tresult\ts\tdevice(s)\tprecision\tautocast\tgraphs/recompiles\tworld\n' >"$TABLE"

NGPU=$(PYTORCH_NVML_BASED_CUDA_CHECK=1 python -c "import torch; print(torch.cuda.device_count())")
echo "gpu smoke: $NGPU GPU(s) visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); outputs in $SMOKE_DIR"
nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/  /'
if [ "$NGPU" -lt 1 ]; then
    echo "SKIP  everything: no GPU visible"
    exit 0
fi
# processes already holding GPU memory before we start (not ours)
nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | sort -u >"$SMOKE_DIR/gpu_pids_before"

uuid_of() { # uuid_of INDEX: the UUID of the physical GPU with that nvidia-smi index
    nvidia-smi --query-gpu=index,uuid --format=csv,noheader | awk -F', ' -v i="$1" '$1 == i { print $2 }'
}

QUICK=(--config configs/digits.yaml --trainer.max_epochs 1 --trainer.limit_train_batches 8
    --trainer.limit_val_batches 2 --trainer.limit_test_batches 2 --trainer.enable_progress_bar false
    --test_after_fit true --trainer.accelerator gpu)

# facts RESULT_JSON... -- PYTHON_ASSERTIONS: each run's result.json is done and tested; the assertions see `f` (its
# facts) and `fs` (every run's facts); prints the table's columns for these runs
facts() {
    local files=()
    while [ "$1" != "--" ]; do
        files+=("$1")
        shift
    done
    shift
    python - "$1" "${files[@]}" <<'PY'
import json, sys
code, paths = sys.argv[1], sys.argv[2:]
fs = []
for path in paths:
    r = json.load(open(path))
    assert r["status"] == "done" and "test/acc" in r["metrics"], (path, r)
    fs.append(r.get("facts") or {})
assert all(fs), f"no facts recorded in {paths}"
f = fs[0]
exec(code)
uniq = lambda key: ",".join(sorted({str(x.get(key)) for x in fs}))
graphs = ",".join(sorted({f"{x.get('compiled_graphs')}/{x.get('recompiles')}" for x in fs}))
devices = ",".join(sorted({str(x.get("device"))[:12] for x in fs}))
print("\t".join([devices, uniq("precision"), uniq("autocast_dtype"), graphs, uniq("world_size")]))
PY
}

check() { # check NAME COMMAND...: PASS when it exits 0; output in $SMOKE_DIR/NAME.log, its last line the table row
    local name=$1
    shift
    local start=$SECONDS row
    if "$@" >"$SMOKE_DIR/$name.log" 2>&1; then
        row=$(tail -n 1 "$SMOKE_DIR/$name.log")
        printf '%s\tPASS\t%s\t%s\n' "$name" "$((SECONDS - start))" "$row" >>"$TABLE"
    else
        printf '%s\tFAIL\t%s\t%s\n' "$name" "$((SECONDS - start))" "$(tail -n 1 "$SMOKE_DIR/$name.log" | cut -c1-100)" \
            >>"$TABLE"
        failed=$((failed + 1))
    fi
}
skip() { printf '%s\tSKIP\t-\t%s\n' "$1" "$2" >>"$TABLE"; }

fit_gpu() { # fit_gpu NAME ASSERTIONS EXTRA...: a quick fit on the GPU, then its facts
    local name=$1 code=$2
    shift 2
    toolkit fit "${QUICK[@]}" --trainer.default_root_dir "$SMOKE_DIR/$name" "$@" || return 1
    facts "$SMOKE_DIR/$name/result.json" -- "$code"
}

ONE="assert f['device'].startswith('GPU-') and f['world_size'] == 1"
check fit_32 fit_gpu fit_32 "$ONE and f['precision'] == '32-true' and f['autocast_dtype'] is None" \
    --trainer.devices 1
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)"; then
    check bf16 fit_gpu bf16 "$ONE and f['precision'] == 'bf16-mixed' and f['autocast_dtype'] == 'bfloat16'" \
        --trainer.devices 1 --trainer.precision bf16-mixed
else
    skip bf16 "the GPU does not support bfloat16"
fi
check fp16 fit_gpu fp16 "$ONE and f['precision'] == '16-mixed' and f['autocast_dtype'] == 'float16'" \
    --trainer.devices 1 --trainer.precision 16-mixed
COMPILED="$ONE and f['compile'] is True and f['compiled_graphs'] >= 1"
check compile fit_gpu compile "$COMPILED" --trainer.devices 1 --model.channels_last true --model.compile true
check compile_lpft fit_gpu compile_lpft "$COMPILED" --trainer.devices 1 --model.compile true \
    --model.freeze_backbone true --model.unfreeze_at_epoch 1 --trainer.max_epochs 2
if [ "$NGPU" -ge 2 ]; then
    check ddp_all fit_gpu ddp_all "assert f['device'].startswith('GPU-') and f['world_size'] == $NGPU" \
        --trainer.devices "$NGPU" --trainer.strategy ddp
else
    skip ddp_all "needs 2 GPUs"
fi

# spec N: an ablation of N runs (one variant per run, each a different learning rate), seed 0
spec() {
    local n=$1 i variants=""
    for i in $(seq 1 "$n"); do variants+="v$i: {model.optimizer.init_args.lr: $i.0e-4}, "; done
    cat <<EOF
name: gpu-smoke
base: [$PWD/configs/digits.yaml]
overrides: {trainer.max_epochs: 1, trainer.limit_train_batches: 8, trainer.limit_val_batches: 2,
            trainer.limit_test_batches: 2, trainer.enable_progress_bar: false}
seeds: [0]
baseline: v1
variants: {${variants%, }}
metrics: [test/acc]
EOF
}

pinned() { # pinned ROOT: each run's slot GPU (the CUDA_VISIBLE_DEVICES its slot line names) and its result.json
    local log
    for log in "$1"/gpu-smoke/*/seed0/run.log; do
        printf '%s %s\n' "$(grep -ho "# slot [0-9]*: CUDA_VISIBLE_DEVICES=[^ ]*" "$log" | head -1 | sed 's/.*=//')" \
            "$(dirname "$log")/result.json"
    done
}

slots() { # one run per GPU; every GPU used, each run on its slot's GPU (by UUID)
    spec "$NGPU" >"$SMOKE_DIR/slots.yaml"
    toolkit ablate run "$SMOKE_DIR/slots.yaml" --root "$SMOKE_DIR/slots" --workers "$NGPU" || return 1
    local gpu result want="" files=()
    while read -r gpu result; do
        files+=("$result")
        want+="'$(uuid_of "$gpu")',"
        facts "$result" -- "assert f['device'] == '$(uuid_of "$gpu")', (f['device'], '$gpu')" >/dev/null || return 1
    done < <(pinned "$SMOKE_DIR/slots")
    facts "${files[@]}" -- "assert sorted({x['device'] for x in fs}) == sorted({$want}) and len(fs) == $NGPU"
}
check slots slots

two_ddp() { # two 2-GPU runs at once: disjoint GPUs, world size 2 each, overlapping in time
    spec 2 >"$SMOKE_DIR/two_ddp.yaml"
    toolkit ablate run "$SMOKE_DIR/two_ddp.yaml" --root "$SMOKE_DIR/two_ddp" --gpus-per-run 2 --workers 2 || return 1
    python - "$SMOKE_DIR/two_ddp" <<'PY' || return 1
import sys
from toolkit.study.ledger import Ledger, ledger_path
records = list(Ledger(ledger_path(sys.argv[1], "gpu-smoke")).read().values())
spans = sorted((r["started_at"], r["finished_at"]) for r in records)
assert len(spans) == 2 and spans[1][0] < spans[0][1], f"the two runs did not overlap: {spans}"
envs = [r.get("env") or {} for r in records]
pins = [set(e.get("CUDA_VISIBLE_DEVICES", "").split(",")) for e in envs]
assert not pins[0] & pins[1], f"the runs shared a GPU: {pins}"
ports = [e.get("MASTER_PORT") for e in envs]
assert all(ports) and ports[0] != ports[1], f"the runs' MASTER_PORTs: {ports}"
PY
    facts "$SMOKE_DIR"/two_ddp/gpu-smoke/*/seed0/result.json -- "assert [x['world_size'] for x in fs] == [2, 2]"
}
if [ "$NGPU" -ge 4 ]; then check two_ddp two_ddp; else skip two_ddp "needs 4 GPUs"; fi

devices_map() {
    local last
    last=$(python -c "import os; v = os.environ.get('CUDA_VISIBLE_DEVICES'); \
print((v.split(',') if v else [str(i) for i in range($NGPU)])[-1])")
    spec 1 >"$SMOKE_DIR/mapped.yaml"
    CUDA_VISIBLE_DEVICES=$last toolkit ablate run "$SMOKE_DIR/mapped.yaml" --root "$SMOKE_DIR/mapped" --devices 0 ||
        return 1
    facts "$SMOKE_DIR"/mapped/gpu-smoke/v1/seed0/result.json -- "assert f['device'] == '$(uuid_of "$last")'"
}
check devices_map devices_map

gpu_safety() { python -m pytest -q -p no:cacheprovider tests/test_gpu_safety.py && printf -- '-\t-\t-\t-\t-\n'; }
check gpu_safety gpu_safety

no_leftovers() { # no process that was not there before holds GPU memory (a few seconds for the driver to let go)
    local left
    for _ in $(seq 10); do
        left=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | sort -u |
            comm -13 "$SMOKE_DIR/gpu_pids_before" -)
        [ -z "$left" ] && break
        sleep 1
    done
    [ -z "$left" ] || { echo "still holding GPU memory: $left"; return 1; }
    printf -- '-\t-\t-\t-\t-\n'
}
check no_leftovers no_leftovers

column -t -s "$(printf '\t')" "$TABLE"
echo "gpu smoke: $failed check(s) failed; logs in $SMOKE_DIR"
exit "$failed"
