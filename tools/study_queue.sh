#!/usr/bin/env bash
# The reproduction studies, one process at a time, continuing from the committed per-run records
# (results/<study>/runs/): a run already recorded is reused, a run whose workdir holds a
# checkpoint resumes, the rest train. Two training processes on 2 cores each run at about half
# speed, so nothing here runs in parallel. With --commit, the new records are committed every 5
# minutes (only results/*/runs paths), so a session that ends loses at most the run in flight.
#
#   tools/study_queue.sh [--commit] [WORKDIR_ROOT]      # default root: runs/
#
# Order: RQ3 (issue 25, about 16 hours of 2 cores, the nearest to done) with every point's
# seed 0 first; then issue 20's mechanism-world RQ2 and RQ1 and the ML-1M tables (ML-100K's are
# done); then issue 21's OneRank studies (tune first: its chosen settings feed the others). Every
# step is resumable; stop with `pkill -TERM -f launch.py` (the run in flight saves a checkpoint),
# and start the queue again in the next session: it skips what is recorded.
set -uo pipefail
cd "$(dirname "$0")/.."
commit=0
if [ "${1:-}" = "--commit" ]; then commit=1; shift; fi
root="${1:-runs}"
mkdir -p "$root"
ML1M=../shared/data/ml-1m-users1-2998
ML100K=../shared/data/ml-100k
E=onetrans_jax/experiments

if [ "$commit" = 1 ]; then
  (
    while true; do
      sleep 300
      for d in results/*/runs; do
        if [ -n "$(git status --porcelain -- "$d")" ]; then
          git add -- "$d" && git commit -q -m "$d: new run records" -- "$d" \
            && echo "$(date -u +%FT%TZ) committed $d"
        fi
      done
    done
  ) >> "$root/commit_loop.log" 2>&1 &
  trap 'kill %1 2>/dev/null' EXIT
fi

step() {  # name, then launch.py's arguments
  local name="$1"; shift
  echo "$(date -u +%FT%TZ) start $name"
  python launch.py "$@" >> "$root/$name.log" 2>&1 || { echo "$(date -u +%FT%TZ) $name failed: $root/$name.log"; exit 1; }
  echo "$(date -u +%FT%TZ) done $name"
}

step rq3 --config $E/onetrans_rq3_scaling.py --workdir "$root/rq3" "--config.sweep.seeds=(0,)"
step rq3_ml1m --config $E/onetrans_rq3_scaling.py:ml1m --workdir "$root/rq3_ml1m" \
  --config.data.path=$ML1M "--config.sweep.seeds=(0,)"
step rq3 --config $E/onetrans_rq3_scaling.py --workdir "$root/rq3"
step rq3_ml1m --config $E/onetrans_rq3_scaling.py:ml1m --workdir "$root/rq3_ml1m" \
  --config.data.path=$ML1M
step rq2_mech --config $E/onetrans_rq2_ablation.py:mechanisms --workdir "$root/rq2_mech"
step rq1_mech --config $E/rq1_baselines.py:mechanisms --workdir "$root/rq1_mech"
step ml1m_tune --config $E/movielens_study.py:1m_tune --workdir "$root/ml1m_tune" \
  --config.data.path=$ML1M
step ml1m_rq1 --config $E/movielens_study.py:1m --workdir "$root/ml1m_rq1" --config.data.path=$ML1M
step ml1m_rq2 --config $E/movielens_study.py:1m_rq2 --workdir "$root/ml1m_rq2" \
  --config.data.path=$ML1M
step onerank_tune --config $E/onerank_main.py:tune --workdir "$root/onerank_tune"
step onerank_mech --config $E/onerank_main.py:mechanisms --workdir "$root/onerank_mech"
step onerank_ablation_mech --config $E/onerank_ablation.py:mechanisms \
  --workdir "$root/onerank_ablation_mech"
step onerank_ml100k --config $E/onerank_main.py:ml100k --workdir "$root/onerank_ml100k" \
  --config.data.path=$ML100K
step onerank_ml1m --config $E/onerank_main.py:ml1m --workdir "$root/onerank_ml1m" \
  --config.data.path=$ML1M
echo "$(date -u +%FT%TZ) queue finished"
