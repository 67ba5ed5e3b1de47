#!/usr/bin/env bash
# bench/full_step.py on a lent GPU machine, in one device call from the repo root, as it is:
#
#     run(command="bash bench/full_step_gpu.sh", carry=[".bstage/whl"], timeout_s=600)
#     run(command="bash bench/full_step_gpu.sh --shape 120b --mode ours", carry=[".bstage/whl"], timeout_s=600)
#
# Arguments go to bench/full_step.py (default: --shape 20b --mode both). The GPU image lacks TRL (and the datasets,
# dill and multiprocess that trl.trainer.utils imports): they come from the py3.12 wheels in $WHEELS (default
# .bstage/whl, git-ignored, named in `carry`), installed without deps into /tmp/site in ~2 s. This checkout is linked
# as `oss_grpo` in /tmp/shim. The report lands in $OUT/full_step.json (rewritten after each mode, so a run cut short
# keeps the modes that finished), the log in $OUT/full_step.log; the markdown table ends the output.
set -euo pipefail
WHEELS=${WHEELS:-.bstage/whl}
OUT=${OUT:-/tmp/full_step_out}
mkdir -p "$OUT" /tmp/shim
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
ln -sfn "$PWD" /tmp/shim/oss_grpo
export PYTHONPATH=/tmp/shim:/tmp/site PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
# 570 s leaves the device call's 600 s limit room to copy $OUT back.
timeout 570 python3 bench/full_step.py --json "$OUT/full_step.json" "$@" 2>&1 | tee "$OUT/full_step.log"
