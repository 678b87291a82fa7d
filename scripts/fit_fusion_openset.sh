#!/usr/bin/env bash
# Refit the fusions (fusion-midi-synth.json, fusion-midi-pianoroll.json) on open-set validation matches.
#   usage: [MODELS=MODELDIR] [OUT=DIR] scripts/fit_fusion_openset.sh [WORKDIR]
# MODELS (default msdmatch/shipped) holds the DHS/PSE models being calibrated; OUT (default MODELS)
# is where the fusion JSONs go.  scripts/train_shipped.sh runs it after training; run it alone to refit.
#
# Calibration data, validation split only (never a test song):
# - queries: the validation queries of the training corpus (scripts/corpora.sh, seed 1, 300
#   distractors; the same corpus as train_shipped.sh, reused from WORKDIR/train_corpus);
# - database: every preview of that corpus plus the non-test previews of a second corpus of
#   distractors (seed 2), about 1,950 previews;
# - open set: two databases, each without the recordings of a complementary half of the queries
#   (python -m msdmatch.evaluation.openset), so every query is matched once with and once without its
#   recording and half of each run's queries have no match; a preview of a query's own music in
#   another corpus (the same music21 work, or the same folk tune under another name) counts as a
#   valid match, not a distractor (alike previews, listed in openset.json).
# `msdmatch calibrate` fits the fusion on both runs, cross-validates it by query and picks the
# threshold that accepts at most 2% of the no-match queries.  The synth fusion vetoes a candidate
# whose verify_score reaches 1.0 (the thesis's c = 0); piano-roll verify scores of true matches
# lie near 1, so that fusion has no veto.  Every step resumes: a re-run skips
# finished corpora, stores and matches (delete WORKDIR/openset/*.parquet to re-match).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-data}
MS=.venv/bin/msdmatch
PY=.venv/bin/python
. scripts/corpora.sh
MODELS=${MODELS:-msdmatch/shipped}
OUT=${OUT:-$MODELS}
mkdir -p "$OUT"
corpus "$W/train_corpus" 1 300
[ -f "$W/extra_corpus/corpus.json" ] || \
    $MS demo-data "$W/extra_corpus" --songs 1 --distractors 500 --seed 2 --balanced
O="$W/openset"
$PY -m msdmatch.evaluation.openset "$W/train_corpus" "$W/extra_corpus" --split valid --out "$O"
for half in a b; do
  $MS featurize audio "$O/db-$half.txt" --out "$O/db-$half.zarr"
  $MS embed "$O/db-$half.zarr" --models "$MODELS"
done
for mode in synth pianoroll; do
  $MS featurize midi "$O/queries.txt" --out "$O/q-$mode.zarr" --mode "$mode"
  $MS embed "$O/q-$mode.zarr" --models "$MODELS"
  for half in a b; do
    [ -e "$O/matches-$mode-$half.parquet" ] || \
      $MS match "$O/q-$mode.zarr" "$O/db-$half.zarr" --out "$O/matches-$mode-$half.parquet" \
          --models "$MODELS" --fusion none
  done
  veto=(); [ "$mode" = synth ] && veto=(--verify-veto 1.0)
  $MS calibrate "$O/matches-$mode-a.parquet" "$O/matches-$mode-b.parquet" \
      --truth "$O/truth-a.csv" --truth "$O/truth-b.csv" "${veto[@]}" --out "$OUT/fusion-midi-$mode.json"
done
