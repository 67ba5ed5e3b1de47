# Source this on a lent GPU machine, from the repo root, before a bench script:
#
#     run(command="source bench/gpu_env.sh && python3 bench/full_step.py --json $OUT/full_step.json",
#         carry=[".bstage/whl"], timeout_s=600)
#
# The GPU image lacks TRL (and the datasets, dill and multiprocess that trl.trainer.utils imports), openai-harmony
# (with pydantic, pydantic-core, annotated-types, typing-inspection and a newer typing-extensions),
# bitsandbytes and gymnasium (with farama-notifications: rl/config.py imports the environments, so every bench that
# builds a TrainConfig needs it): they come from the py3.12 wheels in $WHEELS (default .bstage/whl, git-ignored,
# named in `carry`), installed without deps into /tmp/site in a few seconds. This checkout is linked as `oss_grpo`
# in /tmp/shim. The GPU's name, memory and clocks go to $OUT/gpu.txt (OUT defaults to /tmp/bench_out off the device
# tool).
WHEELS=${WHEELS:-.bstage/whl}
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT" /tmp/shim
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || return 1
ln -sfn "$PWD" /tmp/shim/oss_grpo
export PYTHONPATH=/tmp/shim:/tmp/site PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
