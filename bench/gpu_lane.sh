#!/usr/bin/env bash
# The GPU lane in one call (the H200 device machine, no network): what bench/gpu_report.py
# turns into docs/benchmarks.md's "FSDP on one GPU" section. PARTS (default: all, in order):
#   fsdp        fsdp 1b, torch.compile, batch 8, blocks kept gathered (the MFU setting);
#   torchtitan  torchtitan's own trainer on the same model and setting (bench/torchtitan_1b.py);
#   fsdp_more   fsdp 1b compiled at batch 4 (the setting of the earlier figure), eager at batch 8;
#   ddp         the ddp case on the GPU (200 steps);
#   deepspeed   the deepspeed case, ZeRO-3 and ZeRO-2, on the same model at batch 8;
#   megatron    the megatron case (megatron-core GPTModel) on the same model at batch 8;
#   profile     bench/gpu_profile.py: kernel time by kind against wall time at the MFU setting.
# Libraries the machine lacks (torchtitan, deepspeed, megatron-core and their dependencies) come
# as wheels carried in .whl (WHEELS), installed with --target into one directory on PYTHONPATH.
# Each run has its own time limit (RUN_TIMEOUT, 200 s); a failing run is reported and the lane
# goes on; the exit status is 1 if any failed.
#   RESULTS=DIR [PARTS="..."] bash bench/gpu_lane.sh        (DIR: default /tmp/mlcluster-bench)
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
results=${RESULTS:-/tmp/mlcluster-bench}
venv=${VENV:-/tmp/mlcluster-bench-venv}
wheels=${WHEELS:-$repo/.whl}
parts=" ${PARTS:-fsdp torchtitan fsdp_more ddp deepspeed megatron profile} "
export RESULTS=$results VENV=$venv PYTHONUNBUFFERED=1 RUN_TIMEOUT=${RUN_TIMEOUT:-200}
mkdir -p "$results"
status=0
want() { [[ $parts == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$results/nvidia-smi.txt" ||
  status=1

# The venv (gpu_fsdp.sh makes it: this checkout's workloads on the machine's CUDA torch) and
# the carried wheels.
if want fsdp; then
  BATCH_SIZE=8 TAG=-nr EXTRA=--no-reshard-after-forward MODES=compile \
    bash "$repo/bench/gpu_fsdp.sh" || status=1
else
  BATCH_SIZE=8 MODES= bash "$repo/bench/gpu_fsdp.sh" || status=1
fi
site=/tmp/mlcluster-bench-site
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || status=1
fi
py() { PYTHONPATH=$site timeout "$RUN_TIMEOUT" "$venv/bin/python" "$@"; }

# run NAME SUMMARY_EVENT COMMAND...: stdout to NAME.jsonl, stderr to NAME.log, the summary shown
run() {
  local out=$results/$1 event=$2
  shift 2
  echo "== ${out##*/}: $*" >&2
  if "$@" >"$out.jsonl" 2>"$out.log"; then
    grep "\"event\": \"$event\"" "$out.jsonl"
  else
    status=1
    echo "${out##*/} failed; the end of $out.log:" >&2
    tail -n 30 "$out.log" >&2
  fi
}
launch=(-m torch.distributed.run --standalone --nproc_per_node=1)
same=(--config 1b --seq-len 2048 --steps 30)

if want torchtitan; then
  run torchtitan-1b-b8-compile torchtitan_summary py "${launch[@]}" \
    "$repo/bench/torchtitan_1b.py" --steps 30 --batch-size 8 --seq-len 2048 --compile
fi
if want fsdp_more; then
  BATCH_SIZE=4 MODES=compile bash "$repo/bench/gpu_fsdp.sh" || status=1
  BATCH_SIZE=8 TAG=-nr EXTRA=--no-reshard-after-forward MODES=eager \
    bash "$repo/bench/gpu_fsdp.sh" || status=1
fi
if want ddp; then
  run ddp-gpu summary py "${launch[@]}" -m mlcluster_workloads.ddp --steps 200
fi
if want deepspeed; then
  for stage in 3 2; do
    run "deepspeed-1b-b8-zero$stage" summary py "${launch[@]}" \
      -m mlcluster_workloads.deepspeed_zero "${same[@]}" --batch-size 8 --zero-stage "$stage"
  done
fi
if want megatron; then
  run megatron-1b-b8 summary py "${launch[@]}" -m mlcluster_workloads.megatron_gpt \
    "${same[@]}" --batch-size 8
fi
if want profile; then
  run profile-1b-b8-compile gpu_profile py "${launch[@]}" "$repo/bench/gpu_profile.py" \
    --config 1b --batch-size 8 --seq-len 2048
fi
exit "$status"
