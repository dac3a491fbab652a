#!/usr/bin/env bash
# Single-GPU FSDP2 benchmark: the 1b Llama config in bf16, torch.compile off, then on (MODES).
# Prints each run's summary line (tokens/s, TFLOP/s per device, MFU, peak memory).
#
# For a machine with no network (the H200 device machine): the venv reuses the machine's CUDA
# torch and takes mlcluster-workloads from this checkout, so nothing is fetched or built.
# Knobs (environment): PYTHON (python3), VENV, RESULTS (directory for the JSON lines and logs),
# CONFIG (1b), SEQ_LEN (2048), BATCH_SIZE (4), STEPS (30), WARMUP_STEPS (5), MODES ("eager
# compile"), EXTRA (more fsdp flags, e.g. --no-reshard-after-forward), TAG (added to the result
# files' names, to tell runs with other EXTRA apart), RUN_TIMEOUT (seconds a run may take, 300),
# ALLOW_CPU=1 to smoke-test the script itself on a machine without CUDA (with CONFIG=tiny).
# Result files: $RESULTS/fsdp-<config>-b<batch><tag>-<mode>.jsonl and .log.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=${VENV:-/tmp/mlcluster-bench-venv}
results=${RESULTS:-/tmp/mlcluster-bench}
config=${CONFIG:-1b}
seq_len=${SEQ_LEN:-2048}
batch_size=${BATCH_SIZE:-4}
steps=${STEPS:-30}
warmup_steps=${WARMUP_STEPS:-5}
read -r -a modes <<<"${MODES-eager compile}"
tag=${TAG:-}
run_timeout=${RUN_TIMEOUT:-300}
read -r -a extra <<<"${EXTRA:-}"

mkdir -p "$results"
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv --without-pip --system-site-packages "$venv"
fi
# A .pth file instead of pip: it puts this checkout's package on the venv's path (an editable
# install that needs no build backend and no network) and, where $python is itself a venv's
# interpreter (the device machine's python3 is /opt/torch/.venv/bin/python3), that venv's site
# directories, which --system-site-packages alone does not reach.
site_dir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
{
  echo "$repo/workloads/src"
  "$python" -c 'import site; print("\n".join(site.getsitepackages()))'
} >"$site_dir/mlcluster-bench.pth"

"$venv/bin/python" - <<'PY'
import os, sys
import torch
import mlcluster_workloads
print(f"mlcluster_workloads from {mlcluster_workloads.__file__}", file=sys.stderr)
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}",
      file=sys.stderr)
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}", file=sys.stderr)
elif os.environ.get("ALLOW_CPU") != "1":
    sys.exit("torch sees no CUDA device (ALLOW_CPU=1 runs the script on CPU as a smoke test)")
PY

if [[ ${ALLOW_CPU:-0} == 1 ]]; then dtype=auto; else dtype=bf16; fi
status=0
for mode in "${modes[@]}"; do
  flags=()
  [[ $mode == compile ]] && flags=(--compile)
  out="$results/fsdp-$config-b$batch_size$tag-$mode"
  echo "== fsdp $config, batch $batch_size ${extra[*]}, $mode: $out.jsonl" >&2
  if timeout "$run_timeout" "$venv/bin/python" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m mlcluster_workloads.fsdp --config "$config" --seq-len "$seq_len" \
    --batch-size "$batch_size" --steps "$steps" --warmup-steps "$warmup_steps" \
    --dtype "$dtype" "${flags[@]}" "${extra[@]}" >"$out.jsonl" 2>"$out.log"; then
    grep '"event": "summary"' "$out.jsonl"
  else
    status=1
    echo "fsdp $config $mode failed; the end of $out.log:" >&2
    tail -n 30 "$out.log" >&2
  fi
done
exit "$status"
