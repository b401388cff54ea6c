#!/usr/bin/env bash
# Reproduce the shipped model and its evaluation report (2-core CPU; see docs/MODEL_CARD.md).
# RUNS: where the training outputs go (outside the repository). Stages: multi, ship, eval1, singles, eval.
# THREADS: torch threads per training run (default 1). Two runs fit the 2 cores side by side, e.g.
#   RUNS=../runs configs/reproduce.sh multi & RUNS=../runs configs/reproduce.sh singles; wait
#   RUNS=../runs configs/reproduce.sh ship eval
# (the shipped model: `multi` ran as pilot p1, one thread, beside another pilot; then `singles`,
# `ship`, `eval`; times in docs/MODEL_CARD.md)
set -euo pipefail
RUNS=${RUNS:-../runs}
STAGES=${*:-multi ship eval1 singles eval}
TASKS="topic emoji hashtag emotion sts"
EVAL_SIZES="--auc-anchors 600 --zs-posts 1500 --retrieval-posts 1500 --pca-posts 1500"
for stage in $STAGES; do
  echo "== $stage $(date +%T)"
  case $stage in
    multi) /usr/bin/time -v postemb train --config configs/multitask.json --out "$RUNS/multitask" --threads "${THREADS:-1}" 2>&1 ;;
    ship) mkdir -p postemb_rt/models/default
          cp "$RUNS"/multitask/{postemb.json,adapters.safetensors,projection.safetensors,train_summary.json} \
             postemb_rt/models/default/ ;;
    eval1) postemb eval --model multitask=default --out reports/ $EVAL_SIZES --throughput-posts 1000 ;;
    singles) for t in $TASKS; do postemb train --config "configs/single_$t.json" --out "$RUNS/single_$t" --threads "${THREADS:-1}"; done ;;
    eval) args=(--model multitask=default)
          for t in $TASKS; do [ -f "$RUNS/single_$t/postemb.json" ] && args+=(--model "single-$t=$RUNS/single_$t"); done
          postemb eval "${args[@]}" --out reports/ $EVAL_SIZES --throughput-posts 1000 ;;
  esac
done
echo "== done $(date +%T)"
