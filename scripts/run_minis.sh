#!/usr/bin/env bash
# Every *_mini study over several seeds, then the report with its verdicts: trains the mini twins on the
# synthetic set (20 classes, 1,000 val images), evaluates the Tables 4-6 models with the other
# protocols, ensembles each seed's four Table 4-6 models (Table 7), runs the Sec. 2.2 init check, and
# writes docs/results/ (report.md with each finding's 95 % interval and verdict, PNGs with error bars,
# commands.md with every command and its time). 28 minutes on 2 cores (JOBS=2 trainings at once).
#   scripts/run_minis.sh                      # seeds 0 1 2; finished runs are kept, killed ones resume, unless FORCE=1
#   SEEDS="0 1 2 3 4" JOBS=2 RUNS=/tmp/minis OUT=/tmp/report scripts/run_minis.sh
#   EXTRA="train.epochs=1 data.synthetic_train_per_class=4" ...   # overrides added to every training (a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-outputs/minis}
OUT=${OUT:-docs/results}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-2}
PY=${PYTHON:-python}
EXTRA=${EXTRA:-}
export RUNS OUT PY FORCE EXTRA
export OMP_NUM_THREADS=1  # one thread per process: 2 shared cores lose more to spinning threads than they gain
export DELVING_RUNS=$RUNS  # read by configs/table7_ensemble_mini.yaml
mkdir -p "$RUNS" "$OUT"
LOG="$OUT/commands.md"
export LOG
started=$SECONDS
{
  echo "# Commands that made this report"
  echo
  echo "Written by \`scripts/run_minis.sh\` ($(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(getconf _NPROCESSORS_ONLN) CPU cores, seeds $SEEDS, $JOBS jobs at once)."
  echo "Each line: wall seconds, then the command (lines of parallel jobs interleave)."
  echo
  echo '```'
} > "$LOG"

step() {  # run and record a command (one short line appended at once, so parallel jobs do not tear it)
  local start=$SECONDS
  echo "+ $*" >&2
  "$@"
  printf '%4ds  %s\n' $((SECONDS - start)) "$*" >> "$LOG"
}

train() {  # train <run folder> <experiment> [overrides...]; a killed run resumes from its last.pt
  local name=$1 experiment=$2
  shift 2
  if [[ -n "${FORCE:-}" ]]; then
    rm -rf "${RUNS:?}/$name"
  elif [[ -f "$RUNS/$name/finished.json" ]]; then
    echo "keep $RUNS/$name (finished; FORCE=1 retrains)" >&2
    return
  fi
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  step "$PY" -m delving.train "experiment=$experiment" "hydra.run.dir=$RUNS/$name" "$@" $EXTRA
}

evaluate() {  # evaluate <run folder> <predictions suffix> [overrides...]; a finished test is kept unless FORCE=1
  local name=$1 suffix=$2
  shift 2
  if [[ -f "$RUNS/$name/predictions-$suffix.npz" && -z "${FORCE:-}" ]]; then
    return
  fi
  step "$PY" -m delving.cli.eval "checkpoint=$RUNS/$name/last.pt" "output=$RUNS/$name/predictions-$suffix.npz" "$@"
}

unit() {  # unit <study> <seed>: one training and the tests of its model
  local study=$1 seed=$2 name
  case $study in
    table2_*)  # Table 2 (and Table 1's slopes): ReLU vs PReLU channel-shared vs channel-wise, equal budget
      train "$study-s$seed" "$study" "seed=$seed" ;;
    fig2_* | fig3_*)  # Figures 2 and 3: He vs Xavier init, ReLU (study "fig2_model_b_mini:xavier")
      train "${study%%:*}-${study##*:}-s$seed" "${study%%:*}" "model.init=${study##*:}" "seed=$seed" ;;
    table4_*)  # Table 4: multi-scale dense from training, single scales here; Table 5's 10-view at 256 and 384
      name="$study-s$seed"
      train "$name" "$study" "seed=$seed"
      for scale in 256 384 480; do
        evaluate "$name" "dense-s$scale" eval=dense "eval.scales=[$scale]"
      done
      evaluate "$name" ten_view eval=ten_view
      evaluate "$name" ten_view-s384 eval=ten_view "eval.scales=[384]" ;;
    table6_*)  # Tables 5 and 6: models B and C, multi-scale from training, 10-view at 256 and 384 here
      name="$study-s$seed"
      train "$name" "$study" "seed=$seed"
      evaluate "$name" ten_view eval=ten_view
      evaluate "$name" ten_view-s384 eval=ten_view "eval.scales=[384]" ;;
    *) echo "unknown study $study" >&2; return 2 ;;
  esac
}
export -f step train evaluate unit

# Every (study, seed), the longest first, so the last job to start is a short one.
STUDIES=(table6_model_c_prelu_mini table6_model_b_prelu_mini table4_model_a_prelu_mini table4_model_a_relu_mini
  fig3_deep30_mini:he_fan_out fig3_deep30_mini:xavier fig2_model_b_mini:he_fan_out fig2_model_b_mini:xavier
  table2_net14_prelu_mini table2_net14_prelu_shared_mini table2_net14_relu_mini)
for study in "${STUDIES[@]}"; do
  for seed in $SEEDS; do
    echo "$study $seed"
  done
done | xargs -P "$JOBS" -L 1 bash -c 'set -euo pipefail; unit "$@"' unit

# Table 7: each seed's ensemble of its four Table 4-6 models.
ensembles=()
for seed in $SEEDS; do
  DELVING_MINI_SEED=$seed step "$PY" -m delving.cli.ensemble --config-name table7_ensemble_mini
  ensembles+=("$RUNS/table7_ensemble_mini-s$seed/ensemble.json")
done

# Sec. 2.2: the init check on the 30-layer net (Fig. 3's) and on a timm net.
step "$PY" -m delving.cli.init_check model=net30 model.act=relu "inits=[he_fan_out,xavier,he_fan_in]" \
  "output_dir=$OUT/init_check_net30"
step "$PY" -m delving.cli.init_check timm_model=resnet18 "inits=[own,he_fan_out,xavier]" \
  "output_dir=$OUT/init_check_resnet18"

printf '```\n\nIn all: %d s.\n' $((SECONDS - started)) >> "$LOG"
first=${SEEDS%% *}
cp "$RUNS/table7_ensemble_mini-s$first/ensemble.md" "$OUT/table7_ensemble_mini.md"
# The report last (its own command is in its header).
"$PY" -m delving.cli.report "runs=[$RUNS]" "ensembles=[$(IFS=,; echo "${ensembles[*]}")]" \
  "init_checks=[$OUT/init_check_net30/init_check.json,$OUT/init_check_resnet18/init_check.json]" \
  "output_dir=$OUT"
