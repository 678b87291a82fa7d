#!/usr/bin/env bash
# Reproduce the models shipped in msdmatch/shipped/ from the demo corpus generator.
#   usage: [OUT=MODELDIR] scripts/train_shipped.sh [WORKDIR]
# OUT (default msdmatch/shipped) is where the models and fusions are written.
# The training corpus uses seed 1 and draws music21's collections evenly (--balanced);
# music21 works keep their train/valid/test split in every corpus (the split is a hash
# of the work), so no test song of the demo corpus (seed 0) is trained on.  Every step is resumable: a re-run skips finished work.
# The two MIDI modalities train side by side, one core each, MINUTES (default 20) of
# wall-clock time for DHS and PSE together (DHS 3/4, then the PSE built on it 1/4).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-data}
M=${MINUTES:-20}
MS=.venv/bin/msdmatch
OUT=${OUT:-msdmatch/shipped}
$MS demo-data "$W/train_corpus" --songs 1200 --distractors 300 --seed 1 --balanced
$MS featurize audio "$W/train_corpus/audio" --out "$W/train/db.zarr"
for mode in synth pianoroll; do
  $MS featurize midi "$W/train_corpus/midi" --out "$W/train/q-$mode.zarr" --mode "$mode"
done
train() {  # MODE [extra args]
  local mode=$1; shift
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $MS train "$W/train/q-$mode.zarr" "$W/train/db.zarr" \
      --truth "$W/train_corpus/split.csv" --out "$OUT" --minutes "$M" --seed 0 "$@" \
      > "$W/train-$mode.log" 2>&1
}
start=$(date +%s)
train synth & a=$!
train pianoroll --align-with "$W/train/q-synth.zarr" & b=$!
wait $a; wait $b
echo "trained both modalities in $(( $(date +%s) - start )) s wall (logs: $W/train-*.log)"
# Fusion: run the cascade with the new models on the validation queries and fit the calibrated confidence.
$MS embed "$W/train/db.zarr" --models "$OUT"
for mode in synth pianoroll; do
  $MS embed "$W/train/q-$mode.zarr" --models "$OUT"
  $MS match "$W/train/q-$mode.zarr" "$W/train/db.zarr" --out "$W/train/matches-$mode.parquet" \
      --models "$OUT" --fusion none --keep all
  $MS calibrate "$W/train/matches-$mode.parquet" --truth "$W/train_corpus/split.csv" --split valid \
      --out "$OUT/fusion-midi-$mode.json"
done
