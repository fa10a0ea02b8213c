#!/usr/bin/env bash
# The reproduction studies, continuing from the committed per-run records (results/<study>/runs/):
# a run already recorded is reused, a run whose workdir holds a checkpoint resumes, the rest
# train. With --commit, the new records are committed every 5 minutes (only results/*/runs
# paths), so a session that ends loses at most the runs in flight.
#
# One lane by default: one training process at a time (two unpinned two-thread processes on 2 cores
# each run at about half speed: nothing gained). --lanes N runs N queues side by side, lane i pinned
# to the i-th CPU core it may use (taskset), the lanes sharing each study's runs as they come free
# (config.sweep.claim=True: a lane takes the next run no lane holds, longest estimate first, and
# plans it again under its claim, so no run is trained twice and an interrupted run is resumed by
# whichever lane reaches it next). Until 2026-12-08 a lane trained a fixed share (positions i,
# i + N, ... of the list: config.sweep.shard=i/N); RQ3's last two runs fell to one lane, which
# trained them one after the other while the other lane left the study. On 2 cores, two pinned
# one-thread processes trained 1.11x (OneTrans_S) and 1.16x (RankMixer + Transformer) the
# examples/s of one two-thread process (benchmarks/suite.py --sections=workloads on the
# mechanism-world workloads, under taskset, 2026-12-07). The thread count changes the rounding of some reductions, not the run: 30 steps of
# the mechanism world's OneTrans_S gave the same AUCs on one thread and on two, and log losses 5e-9
# apart (a 40-step DCNv2 run: identical). A lane that finishes its part of a study goes on to the
# next; the last lane to finish a study writes its report (an unsharded sweep that reuses every
# record), under a lock, once per set of runs (their fingerprints) and code; the first pass's
# one-seed sweeps never write one. Every launch.py re-runs itself once with huge pages for the
# host allocator (onetrans_jax/host_memory.py: steps 1.03-1.29x faster on one pinned core, the
# same numbers), so a lane needs nothing set.
#
#   tools/study_queue.sh [--commit] [--lanes N] [WORKDIR_ROOT]   # default root: runs/, N = 1
#   tools/study_queue.sh --plan [WORKDIR_ROOT]          # trains nothing: each study's dry-run
#                                                       # total (at the caps, and as finished
#                                                       # runs stopped early), in queue order
#   tools/study_queue.sh --plan --measure 5 [ROOT]      # the same, each variant's step time
#                                                       # measured (5 timed steps of every
#                                                       # variant with runs left) instead of
#                                                       # estimated from FLOPs; run it on an
#                                                       # idle machine (taskset -c 0 for a
#                                                       # lane's one core)
#
# Order: RQ3 first with all its seeds (issue 25: about 42 hours of 2 cores left on 2026-12-06, the
# one issue those hours close; ML-1M's runs stop early, so it goes before the mechanism world's,
# which run to 12000 steps). Then two passes over the rest: the first trains seed 0 of every study
# (issue 20's instruction: measure one seed of each row before sizing the rest; it also gives every
# table a first row early), the second the remaining seeds. OneRank's tuning comes first in the
# first pass (its choices, copied into onerank_main.TUNED, feed issue 21's other mechanism-world
# studies, which wait for them; since 2026-12-08). Within a pass: issue 20's mechanism-world RQ1
# and RQ2 and the ML-1M tables (ML-100K's are done), then issue 21's OneRank studies. A run in
# flight when the machine goes is lost (checkpoints are not committed), so start the queue at the beginning of a session: the
# mechanism world's full-attention row alone takes about 2.5 hours. Every step is resumable; stop
# with `pkill -TERM -f launch.py` (the run in flight saves a checkpoint), and start the queue again
# in the next session: it skips what is recorded. The whole script is one function, read in full
# before it runs, so editing this file does not disturb a queue already running (bash reads a plain
# script as it goes). A launch.py in flight keeps the code it imported for every run it takes of
# its study; to have a lane pick up a code change (a speed-up), stop the queue as above and start it
# again: the runs in flight resume from the checkpoints their SIGTERM saved.
main() {
set -uo pipefail
cd "$(dirname "$0")/.."
commit=0
plan=0
measure=0
lanes=1
lane=0
while [ $# -gt 0 ]; do
  case "$1" in
    --commit) commit=1; shift ;;
    --plan) plan=1; shift ;;
    --measure) measure="${2:-}"; shift; [ $# -gt 0 ] && shift ;;
    --measure=*) measure="${1#--measure=}"; shift ;;
    --lanes) lanes="${2:-}"; shift; [ $# -gt 0 ] && shift ;;
    --lanes=*) lanes="${1#--lanes=}"; shift ;;
    -*) echo "study_queue: unknown option $1 (use --commit, --plan, --measure N, --lanes N)" >&2; exit 2 ;;
    *) break ;;
  esac
done
root="${1:-runs}"
if ! [[ "$lanes" =~ ^[1-9][0-9]*$ ]]; then
  echo "study_queue: --lanes '$lanes': give a whole number of lanes >= 1" >&2
  exit 2
fi
if ! [[ "$measure" =~ ^[0-9]+$ ]]; then
  echo "study_queue: --measure '$measure': give a whole number of timed steps >= 0" >&2
  exit 2
fi
if [ "$measure" != 0 ] && [ "$plan" = 0 ]; then
  echo "study_queue: --measure times steps for --plan's estimate; add --plan (a queue that" \
       "trains measures nothing)" >&2
  exit 2
fi
if [ "$plan" = 1 ]; then lanes=1; fi
if [ "$lanes" -gt 1 ]; then
  if ! command -v taskset > /dev/null; then
    echo "study_queue: --lanes $lanes pins each lane to a core with taskset, which is missing" \
         "(util-linux); install it or run one lane" >&2
    exit 2
  fi
  # The cores this process may use (a container's cpuset need not start at 0): lane i gets the
  # i-th of them.
  read -r -a cores <<< "$(python -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
  if [ "${#cores[@]}" -lt "$lanes" ]; then
    echo "study_queue: --lanes $lanes needs $lanes CPU cores, this process may use" \
         "${#cores[@]} (${cores[*]})" >&2
    exit 2
  fi
fi
mkdir -p "$root"
# A python without the project's requirements would fail every step in a second; say so once.
if ! python -c 'import onetrans_jax.launch' 2> "$root/import_check.log"; then
  echo "study_queue: 'python' ($(command -v python)) cannot import onetrans_jax.launch" \
       "(see $root/import_check.log); activate the virtual environment that has" \
       "requirements.txt installed, then run the queue again" >&2
  exit 2
fi
ML1M=../shared/data/ml-1m-users1-2998
ML100K=../shared/data/ml-100k
E=onetrans_jax/experiments

if [ "$plan" = 1 ]; then commit=0; fi
commit_records() {  # only results/*/runs paths; a failure (git busy) is logged, retried later
  for d in results/*/runs; do
    if [ -n "$(git status --porcelain -- "$d")" ]; then
      git add -- "$d" && git commit -q -m "$d: new run records" -- "$d" \
        && echo "$(date -u +%FT%TZ) committed $d"
    fi
  done
}
if [ "$commit" = 1 ]; then
  ( while true; do sleep 300; commit_records; done ) >> "$root/commit_loop.log" 2>&1 &
  loop=$!
  # On exit (the queue finished, or SIGTERM at a session's end) the records written since the
  # last pass are committed too, so a session loses at most the runs in flight.
  trap 'kill "$loop" 2>/dev/null; commit_records >> "$root/commit_loop.log" 2>&1' EXIT
fi

interrupted() {  # exit status of a run stopped by SIGTERM / SIGINT (128 + 15 / 2), checkpoint saved
  [ "$1" = 143 ] || [ "$1" = 130 ]
}

step() {  # name, then launch.py's arguments
  local name="$1"; shift
  if [ "$plan" = 1 ]; then
    local line
    line="$(python launch.py "$@" --config.sweep.dry_run=True \
              "--config.sweep.measure_steps=$measure" 2>&1 | tee "$root/$name.plan.log" \
            | grep 'sweep plan:')"
    echo "$name: ${line:-no plan (see $root/$name.plan.log)}"
    return
  fi
  local log="$root/$name.log" tag="" extra=() pin=() some_seeds=0 a
  # The first pass's sweeps (--config.sweep.seeds=(0,)) train one seed of a study: they must not
  # write its report, which would replace a finished study's every-seed report with a one-seed one.
  for a in "$@"; do [[ "$a" == --config.sweep.seeds=* ]] && some_seeds=1; done
  if [ "$lanes" -gt 1 ]; then
    log="$root/$name.lane$lane.log"; tag=" (lane $lane/$lanes)"
    extra=("--config.sweep.claim=True"); pin=(taskset -c "${cores[$lane]}")
  elif [ "$some_seeds" = 1 ]; then
    extra=("--config.sweep.shard=0/1")   # a sharded sweep writes records and no report
  fi
  echo "$(date -u +%FT%TZ) start $name$tag"
  # A study that fails (its data missing, a bad record) is logged and the queue goes on.
  # An interrupted one (SIGTERM / SIGINT: 143 / 130, its checkpoint saved) stops the queue.
  ${pin[@]+"${pin[@]}"} python launch.py "$@" ${extra[@]+"${extra[@]}"} >> "$log" 2>&1
  local rc=$?
  if [ "$rc" = 0 ]; then
    echo "$(date -u +%FT%TZ) done $name$tag"
    if [ "$lanes" -gt 1 ] && [ "$some_seeds" = 0 ]; then report "$name" "$@"; fi
  elif interrupted "$rc"; then
    echo "$(date -u +%FT%TZ) $name$tag interrupted (exit $rc): the queue stops; run it again to" \
         "resume"
    exit "$rc"
  else
    echo "$(date -u +%FT%TZ) FAILED $name$tag (exit $rc): see $log"
  fi
}

report() {  # lanes: once none of a study's runs is left, one unsharded sweep writes its report
  local name="$1"; shift
  (
    flock 9
    plan_out="$(taskset -c "${cores[$lane]}" python launch.py "$@" --config.sweep.dry_run=True \
                2>&1)"
    line="$(grep 'sweep plan:' <<< "$plan_out")"
    if [ -z "$line" ]; then
      echo "$(date -u +%FT%TZ) FAILED report $name: its dry run printed no plan (run it alone:" \
           "python launch.py $* --config.sweep.dry_run=True)"
      exit 0
    fi
    if ! [[ "$line" =~ \ 0\ resumed,\ 0\ to\ train ]]; then
      echo "$(date -u +%FT%TZ) $name: lane $lane's runs are done; the report waits for the other" \
           "lanes' (${line#*sweep plan: })"
      exit 0
    fi
    # Reported once per: these arguments, these runs (each one's variant, seed and fingerprint:
    # a study retrained under a changed config has the same counts but other fingerprints) and
    # this code (a changed report writer regenerates the report from the same records).
    runs_sum="$(grep -E '^  .* seed [0-9]+: (reuse|resume|train) ' <<< "$plan_out" \
                | sed -E 's/ +[0-9]+:[0-9]{2}:[0-9]{2} / /' | sort | sha1sum)"
    stamp="$*|${line%%;*}|runs ${runs_sum%% *}|code $(git rev-parse HEAD:onetrans_jax 2>/dev/null)"
    if [ -f "$root/$name.reported" ] && [ "$(cat "$root/$name.reported")" = "$stamp" ]; then
      exit 0
    fi
    echo "$(date -u +%FT%TZ) report $name (lane $lane): every run is recorded"
    taskset -c "${cores[$lane]}" python launch.py "$@" >> "$root/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
      echo "$stamp" > "$root/$name.reported"
      echo "$(date -u +%FT%TZ) reported $name"
    elif interrupted "$rc"; then exit "$rc"
    else echo "$(date -u +%FT%TZ) FAILED report $name (exit $rc): see $root/$name.log"
    fi
  ) 9> "$root/$name.report.lock"
  local rc=$?
  if interrupted "$rc"; then
    echo "$(date -u +%FT%TZ) report $name interrupted (exit $rc): the queue stops"
    exit "$rc"
  fi
}

# ML-1M's RQ1 / RQ2 rows and OneRank's ML-1M rows read each family's sparse learning rate from
# movielens_study.TUNED_SPARSE_LR['1m'], which is copied by hand from ml1m_tune's committed
# selection (tests/test_tuning.py checks the copy). Until then they would train at the default
# rate, under fingerprints the tuned study never reuses: hours of 2 CPU cores lost.
tuned_1m() {
  python -c "import sys; from onetrans_jax.experiments import movielens_study as m; \
sys.exit(0 if m.TUNED_SPARSE_LR['1m'] else 1)"
}

step_tuned_1m() {  # like step, for a study that needs the ML-1M tuning's choices
  if [ "$plan" = 0 ] && ! tuned_1m; then
    echo "$(date -u +%FT%TZ) skip $1: TUNED_SPARSE_LR['1m'] in" \
         "onetrans_jax/experiments/movielens_study.py is empty; when ml1m_tune has finished, copy" \
         "results/ml1m_tune/selection.json's choices into it and commit, then run the queue again"
    return
  fi
  step "$@"
}

# OneRank's mechanism-world studies read each family's dense learning rate and width from
# onerank_main.TUNED, copied by hand from onerank_tune's committed selection (tests/test_tuning.py
# checks the copy); until then their runs would train at the untuned defaults, under fingerprints
# the tuned study never reuses.
tuned_onerank() {
  python -c "import sys; from onetrans_jax.experiments import onerank_main as m; \
sys.exit(0 if m.TUNED else 1)"
}

step_tuned_onerank() {  # like step, for a study that needs OneRank's tuning's choices
  if [ "$plan" = 0 ] && ! tuned_onerank; then
    echo "$(date -u +%FT%TZ) skip $1: TUNED in onetrans_jax/experiments/onerank_main.py is empty;" \
         "when onerank_tune has finished, copy results/onerank_tune/selection.json's choices into" \
         "it and commit, then run the queue again"
    return
  fi
  step "$@"
}

studies() {  # extra launch.py arguments for every step (the first pass: one seed)
  local x=("$@")
  # RQ3: every seed in the first pass already (see the order above).
  step rq3_ml1m --config $E/onetrans_rq3_scaling.py:ml1m --workdir "$root/rq3_ml1m" \
    --config.data.path=$ML1M
  step rq3 --config $E/onetrans_rq3_scaling.py --workdir "$root/rq3"
  # OneRank's tuning (every run, one seed each) before the rest: the mechanism-world OneRank
  # studies wait for its choices, and it says early whether tuning closes OneRank's gap (issue 21).
  step onerank_tune --config $E/onerank_main.py:tune --workdir "$root/onerank_tune"
  step rq1_mech --config $E/rq1_baselines.py:mechanisms --workdir "$root/rq1_mech" "${x[@]}"
  step rq2_mech --config $E/onetrans_rq2_ablation.py:mechanisms --workdir "$root/rq2_mech" \
    "${x[@]}"
  step ml1m_tune --config $E/movielens_study.py:1m_tune --workdir "$root/ml1m_tune" \
    --config.data.path=$ML1M
  step_tuned_1m ml1m_rq1 --config $E/movielens_study.py:1m --workdir "$root/ml1m_rq1" \
    --config.data.path=$ML1M "${x[@]}"
  step_tuned_1m ml1m_rq2 --config $E/movielens_study.py:1m_rq2 --workdir "$root/ml1m_rq2" \
    --config.data.path=$ML1M "${x[@]}"
  step_tuned_onerank onerank_mech --config $E/onerank_main.py:mechanisms \
    --workdir "$root/onerank_mech" "${x[@]}"
  step_tuned_onerank onerank_ablation_mech --config $E/onerank_ablation.py:mechanisms \
    --workdir "$root/onerank_ablation_mech" "${x[@]}"
  step onerank_ml100k --config $E/onerank_main.py:ml100k --workdir "$root/onerank_ml100k" \
    --config.data.path=$ML100K "${x[@]}"
  step_tuned_1m onerank_ml1m --config $E/onerank_main.py:ml1m --workdir "$root/onerank_ml1m" \
    --config.data.path=$ML1M "${x[@]}"
}

if [ "$plan" = 1 ]; then
  studies   # every seed: what is left of each study
  exit 0
fi
if [ "$lanes" = 1 ]; then
  studies "--config.sweep.seeds=(0,)"
  studies
else
  pids=()
  for ((i = 0; i < lanes; i++)); do
    ( lane=$i; studies "--config.sweep.seeds=(0,)"; studies
      echo "$(date -u +%FT%TZ) lane $i/$lanes finished" ) &
    pids+=($!)
  done
  stopped=0
  for p in "${pids[@]}"; do wait "$p" || stopped=$?; done
  if [ "$stopped" != 0 ]; then
    echo "$(date -u +%FT%TZ) queue stopped (a lane exited $stopped); run it again with" \
         "--lanes $lanes to resume"
    exit "$stopped"
  fi
fi
echo "$(date -u +%FT%TZ) queue finished"
}

main "$@"
exit
