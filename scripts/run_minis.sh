#!/usr/bin/env bash
# Every *_mini study, then the report: trains the mini twins on the synthetic set (CPU, ~17 minutes on
# 2 shared cores), evaluates them with the other protocols of Tables 4-6, ensembles them (Table 7), runs the
# Sec. 2.2 init check, and writes docs/results/ (report.md, PNGs, commands.md with every command and its time).
#   scripts/run_minis.sh                # all; finished runs (last.pt present) are kept unless FORCE=1
#   RUNS=/tmp/minis OUT=/tmp/report scripts/run_minis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-outputs/minis}
OUT=${OUT:-docs/results}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1  # one thread per process: 2 shared cores lose more to spinning threads than they gain
export DELVING_RUNS=$RUNS  # read by configs/table7_ensemble_mini.yaml
mkdir -p "$RUNS" "$OUT"
LOG="$OUT/commands.md"
{
  echo "# Commands that made this report"
  echo
  echo "Written by \`scripts/run_minis.sh\` ($(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(getconf _NPROCESSORS_ONLN) CPU cores)."
  echo "Each line: wall seconds, then the command."
  echo
  echo '```'
} > "$LOG"

step() {  # run and record a command
  local start=$SECONDS
  echo "+ $*" >&2
  "$@"
  printf '%4ds  %s\n' $((SECONDS - start)) "$*" >> "$LOG"
}

train() {  # train <run name> <experiment> [overrides...]
  local name=$1 experiment=$2
  shift 2
  if [[ -f "$RUNS/$name/last.pt" && -z "${FORCE:-}" ]]; then
    echo "keep $RUNS/$name (FORCE=1 retrains)" >&2
    return
  fi
  rm -rf "${RUNS:?}/$name"
  step "$PY" -m delving.train "experiment=$experiment" "hydra.run.dir=$RUNS/$name" "$@"
}

evaluate() {  # evaluate <run name> <predictions suffix> [overrides...]
  local name=$1 suffix=$2
  shift 2
  step "$PY" -m delving.cli.eval "checkpoint=$RUNS/$name/last.pt" "output=$RUNS/$name/predictions-$suffix.npz" "$@"
}

# Table 2 (and Table 1's slopes): ReLU vs PReLU channel-shared vs channel-wise, equal budget.
for act in relu prelu_shared prelu; do
  train "table2_net14_${act}_mini" "table2_net14_${act}_mini"
done

# Figures 2 and 3: He vs Xavier init, ReLU.
for init in he_fan_out xavier; do
  train "fig2_model_b_mini-$init" fig2_model_b_mini "model.init=$init"
  train "fig3_deep30_mini-$init" fig3_deep30_mini "model.init=$init"
done

# Table 4 (model A, ReLU vs PReLU, same schedule): multi-scale dense from training, single scales here;
# Table 5's 10-view rows of the same models.
for act in relu prelu; do
  name="table4_model_a_${act}_mini"
  train "$name" "$name"
  for scale in 256 384 480; do
    evaluate "$name" "dense-s$scale" eval=dense "eval.scales=[$scale]"
  done
  evaluate "$name" ten_view eval=ten_view
done

# Tables 5 and 6: models B and C with PReLU (multi-scale from training, 10-view here).
for model in b c; do
  name="table6_model_${model}_prelu_mini"
  train "$name" "$name"
  evaluate "$name" ten_view eval=ten_view
done

# Table 7: the ensemble of the four Table 4-6 models.
step "$PY" -m delving.cli.ensemble --config-name table7_ensemble_mini

# Sec. 2.2: the init check on the 30-layer net (Fig. 3's) and on a timm net.
step "$PY" -m delving.cli.init_check model=net30 model.act=relu "inits=[he_fan_out,xavier,he_fan_in]" \
  "output_dir=$OUT/init_check_net30"
step "$PY" -m delving.cli.init_check timm_model=resnet18 "inits=[own,he_fan_out,xavier]" \
  "output_dir=$OUT/init_check_resnet18"

echo '```' >> "$LOG"
cp "$RUNS/table7_ensemble_mini/ensemble.md" "$OUT/table7_ensemble_mini.md"
# The report last (its own command is in its header).
"$PY" -m delving.cli.report "runs=[$RUNS]" "ensembles=[$RUNS/table7_ensemble_mini/ensemble.json]" \
  "init_checks=[$OUT/init_check_net30/init_check.json,$OUT/init_check_resnet18/init_check.json]" \
  "output_dir=$OUT"
