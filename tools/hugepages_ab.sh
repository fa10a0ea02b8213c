#!/usr/bin/env bash
# A/B of host_memory.py's huge pages on the study workloads: the suite's workload rows with the
# default (huge pages) and with ONETRANS_HUGEPAGES=0, alternating, each in a fresh process.
#   tools/hugepages_ab.sh [CORES] [WORKLOADS] [ROUNDS]
#   tools/hugepages_ab.sh 0 onetrans_s_mech,rankmixer_transformer_mech 2  # one pinned core
#   tools/hugepages_ab.sh all                                           # every core, every workload
# Prints each run's workload lines and page faults (GNU time); the JSON records go to
# ${OUT:-/tmp}/hugepages_{on,off}_<round>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cores="${1:-all}"
workloads="${2:-onetrans_s_mech,dcnv2_din_mech,rankmixer_transformer_mech,onerank_mech,onetrans_ple_mech,onetrans_s_small}"
rounds="${3:-1}"
out="${OUT:-/tmp}"
pin=()
if [ "$cores" != all ]; then pin=(taskset -c "$cores"); fi
for ((r = 1; r <= rounds; r++)); do
  for mode in on off; do
    flag=1; [ "$mode" = off ] && flag=0
    echo "== round $r, huge pages $mode (cores: $cores)"
    ONETRANS_HUGEPAGES=$flag /usr/bin/time -f "   page faults %R, user %U s, system %S s" \
      ${pin[@]+"${pin[@]}"} python -m onetrans_jax.benchmarks.suite --sections=workloads \
      --workloads="$workloads" --repeats=5 --json="$out/hugepages_${mode}_$r.json" 2>&1 \
      | grep -E "^  workload |page faults"
  done
done
