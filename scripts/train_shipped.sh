#!/usr/bin/env bash
# Reproduce the models shipped in msdmatch/shipped/ from the demo corpus generator.
#   usage: [OUT=MODELDIR] [MINUTES=40] scripts/train_shipped.sh [WORKDIR]
# OUT (default msdmatch/shipped) is where the models and fusions are written.
# Four training corpora (scripts/corpora.sh: three quarters of their previews rendered by
# msdmatch's FM synthesizer): seed 1 (every preview, 300 distractors among them) and SEEDS (their
# train and valid songs appended).
# music21 works keep their train/valid/test split in every corpus (the split is a hash of the
# work), so no test song of the demo corpus (seed 0) is trained on.  Every step is resumable: a
# re-run skips finished work.
# The two MIDI modalities train side by side, one core each, MINUTES (default 40) of
# wall-clock time for DHS and PSE together (DHS 3/4, then the PSE built on it 1/4).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-data}
M=${MINUTES:-40}
MS=.venv/bin/msdmatch
. scripts/corpora.sh
OUT=${OUT:-msdmatch/shipped}
T="$W/train"
mkdir -p "$T"
SEEDS="4 5 6"  # the corpora whose train and valid songs are appended to the seed-1 corpus
# once NAME CMD...: run CMD unless a run finished it (a base store grown by the appends below
# no longer matches its first input list, so featurize would refuse to resume it).
once() { local m="$T/.done-$1"; shift; [ -f "$m" ] || { "$@"; touch "$m"; }; }
corpus "$W/train_corpus" 1 300
once db $MS featurize audio "$W/train_corpus/audio" --out "$T/db.zarr"
for mode in synth pianoroll; do
  once "q-$mode" $MS featurize midi "$W/train_corpus/midi" --out "$T/q-$mode.zarr" --mode "$mode"
done
for seed in $SEEDS; do corpus "$W/train_corpus$seed" "$seed" 0; done
# The merged split.csv, and manifests of the appended corpora's train and valid songs.
.venv/bin/python - "$W" $SEEDS <<'PY'
import csv, sys
w, seeds = sys.argv[1], sys.argv[2:]
fields = ["query_id", "track_id", "split"]
with open(f"{w}/train/split.csv", "w", newline="") as fh:
    out = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
    out.writeheader()
    out.writerows(csv.DictReader(open(f"{w}/train_corpus/split.csv")))
    for c in (f"{w}/train_corpus{s}" for s in seeds):
        rows = [r for r in csv.DictReader(open(f"{c}/split.csv")) if r["split"] in ("train", "valid")]
        out.writerows(rows)
        with open(f"{c}/train-audio.txt", "w") as m:
            m.writelines(f"{c}/audio/{r['track_id']}.mp3\n" for r in rows if r["track_id"])
        with open(f"{c}/train-midi.txt", "w") as m:
            m.writelines(f"{c}/midi/{q}.mid\n" for q in sorted({r["query_id"] for r in rows if r["query_id"]}))
PY
for seed in $SEEDS; do
  C="$W/train_corpus$seed"
  once "db-$seed" $MS featurize audio "$C/train-audio.txt" --out "$T/db.zarr" --append
  for mode in synth pianoroll; do
    once "q-$mode-$seed" $MS featurize midi "$C/train-midi.txt" --out "$T/q-$mode.zarr" --mode "$mode" --append
  done
done
train() {  # MODE [extra args]
  local mode=$1; shift
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $MS train "$T/q-$mode.zarr" "$T/db.zarr" \
      --truth "$T/split.csv" --out "$OUT" --minutes "$M" --seed 0 "$@" \
      > "$W/train-$mode.log" 2>&1
}
start=$(date +%s)
train synth & a=$!
train pianoroll --align-with "$T/q-synth.zarr" & b=$!
wait $a; wait $b
echo "trained both modalities in $(( $(date +%s) - start )) s wall (logs: $W/train-*.log)"
# Fusions: the open-set calibration on the seed-1 corpus's validation queries.
MODELS="$OUT" scripts/fit_fusion_openset.sh "$W"
