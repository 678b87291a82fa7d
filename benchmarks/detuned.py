"""Accuracy on off-pitch recordings: the demo's test previews played sharp or flat.

A tape or disc transferred at the wrong speed, or a band tuned to itself,
puts every pitch between two CQT bins.  This script copies a finished demo's
database previews, replaces each test song's true preview by the same audio
resampled to play ``--cents`` sharp (2^(cents/1200) faster, so also that
much shorter), then runs ``featurize audio``, ``embed``, ``match`` (the demo's
embedded synthesized-CQT queries) and ``report`` on it, and prints the
report's top-1, MRR, PSE's top-1% recall and the top-1 of single scores.  ``--cents 0`` re-encodes
the same previews unchanged (as WAV), the control.

Usage: ``python benchmarks/detuned.py [--demo demo_out] [--cents 40] [--workdir /tmp/msdmatch-detuned]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def detuned_copy(demo: Path, out: Path, cents: float) -> int:
    """Copy ``demo``'s previews to ``out``, the test songs' true previews played ``cents`` sharp."""
    import librosa
    import numpy as np
    import soundfile as sf

    from msdmatch.io.decode import decode_audio
    from msdmatch.models.pairs import read_truth

    test = {t for _, t, _ in read_truth(str(demo / "truth_test.csv"))}
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted((demo / "corpus" / "audio").iterdir()):
        if f.stem not in test:
            shutil.copy(f, out / f.name)
            continue
        y, sr = decode_audio(f.read_bytes(), max_seconds=600)
        rate = 2.0 ** (cents / 1200.0)
        y = librosa.resample(y, orig_sr=sr * rate, target_sr=sr, res_type="soxr_hq") if cents else y
        sf.write(out / f"{f.stem}.wav", np.asarray(y, np.float32), sr)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="a finished `msdmatch demo` directory")
    ap.add_argument("--cents", type=float, default=40.0)
    ap.add_argument("--workdir", default="/tmp/msdmatch-detuned")
    args = ap.parse_args()
    demo, work = Path(args.demo), Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    n = detuned_copy(demo, work / "audio", args.cents)
    ms = str(Path(sys.executable).with_name("msdmatch"))
    db, matches = str(work / "db.zarr"), str(work / "matches.parquet")
    for cmd in (["featurize", "audio", str(work / "audio"), "--out", db, "--quiet"],
                ["embed", db, "--quiet"],
                ["match", str(demo / "queries-synth.zarr"), db, "--out", matches, "--quiet"],
                ["report", matches, "--truth", str(demo / "truth_test.csv"), "--out", str(work / "report"),
                 "--queries", str(demo / "queries-synth.zarr"), "--db", db]):
        subprocess.run([ms, *cmd], check=True, stdout=subprocess.DEVNULL)
    m = json.loads((work / "report" / "metrics.json").read_text())
    singles = ", ".join(f"{k} {v:.3f}" for k, v in m["top1_by_score"].items())
    print(f"{n} test previews played {args.cents:+g} cents: top-1 {m['top_1']:.3f}, MRR {m['mrr']:.3f}, "
          f"PSE top 1% {m['pse_top_1pct']:.3f}")
    print(f"top-1 by single score: {singles}")


if __name__ == "__main__":
    main()
