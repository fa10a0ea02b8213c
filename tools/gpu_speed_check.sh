#!/usr/bin/env bash
# Issue 24's device check as one call (about 9 minutes): the suite's ceilings and the train rows
# that matter at the paper shapes (bf16, 128 requests x 16 candidates), a profiled OneTrans_S step
# and the studies' workloads. Every result is written under $OUT as it is measured (the suite
# rewrites its JSON after every row), so a time limit loses nothing finished.
#
#   here:   tools/device_wheels.sh                  # once: .whl/ for the carry
#   device: run(command="tools/gpu_speed_check.sh", carry=[".whl"], timeout_s=600)
#   CPU dry run of the same script (minutes): OUT=/tmp/out SHAPES=tiny PROFILE=tiny \
#           WORKLOADS=tiny VARIANTS="default,no pyramid" tools/gpu_speed_check.sh
#
# Then: copy $OUT/gpu_suite.json to results/speed/ and regenerate the README's tables
# (python -m onetrans_jax.benchmarks.readme_speed results/speed/*.json).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
SHAPES="${SHAPES:-onetrans_s,onetrans_l}"
# The rows that matter first (compiles are slow on a GPU: an earlier run lost its last rows to a
# time limit); VARIANTS=all runs every row of the suite.
VARIANTS="${VARIANTS:-default,cudnn,no pyramid}"
PROFILE="${PROFILE:-onetrans_s}"
WORKLOADS="${WORKLOADS:-onetrans_s_mech,onerank_mech,rankmixer_transformer_mech,dcnv2_din_mech}"
(nvidia-smi || true; python3 -c 'import jax; print(jax.__version__, jax.devices())') \
  > "$OUT/machine.txt" 2>&1
status=0
# 1. Ceilings, attention alone and the train rows ('no pyramid' gives the pyramid's saving).
pick=(--variants="$VARIANTS")
[ "$VARIANTS" = all ] && pick=()
timeout "${T_SUITE:-330}" python3 -m onetrans_jax.benchmarks.suite --shapes="$SHAPES" \
  --sections=ceiling,attention,train,savings --repeats=5 "${pick[@]}" \
  --json="$OUT/gpu_suite.json" > "$OUT/suite.log" 2>&1 || status=$?
# 2. One profiled step, per model component.
timeout "${T_PROFILE:-90}" python3 -m onetrans_jax.benchmarks.profile_step --shape="$PROFILE" \
  > "$OUT/profile.txt" 2>&1 || status=$?
# 3. The studies' own workloads, data loading included.
timeout "${T_WORKLOADS:-120}" python3 -m onetrans_jax.benchmarks.suite --sections=ceiling,workloads \
  --workloads="$WORKLOADS" --json="$OUT/gpu_workloads.json" > "$OUT/workloads.log" 2>&1 \
  || status=$?
ls -l "$OUT"
grep -v '^[IW][0-9]' "$OUT/suite.log" | tail -40
exit "$status"
