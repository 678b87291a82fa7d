"""Featurize throughput: previews per core, MIDI synthesis, 2-worker speed-up.

Usage: python benchmarks/featurize.py [--n 500] [--workdir /tmp/msdmatch-bench]

Prints seconds per 30 s preview per core for the whole stage (decode + CQT +
store write, through Dask), librosa's CQT alone on the same audio for
reference (plain ``librosa.cqt``, which rebuilds its filters per call; the
stage builds them once per process), MIDI synthesis + CQT seconds per minute
of music, and the speed-up of 2 workers over 1 on the same previews (every
worker warmed up first).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="previews")
    ap.add_argument("--workdir", default="/tmp/msdmatch-bench")
    args = ap.parse_args()
    import librosa
    import soundfile as sf
    from _corpus import previews, song

    from msdmatch.executor import client_for
    from msdmatch.io.sources import Item
    from msdmatch.params import DEFAULT_PARAMS as P
    from msdmatch.stages import featurize
    from msdmatch.stages.featurize import midi_cqt

    work = Path(args.workdir)
    paths = previews(work / "audio", n=args.n)
    y, sr = sf.read(str(paths[0]), dtype="float32")
    librosa.cqt(y, sr=sr, hop_length=P.hop_length, fmin=P.fmin_hz, n_bins=P.n_bins)  # one-time set-up
    t = time.perf_counter()
    for _ in range(20):
        librosa.cqt(y, sr=sr, hop_length=P.hop_length, fmin=P.fmin_hz, n_bins=P.n_bins)
    cqt_alone = (time.perf_counter() - t) / 20
    secs = {}
    for workers in (1, 2):
        out = work / f"db{workers}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        with client_for(None, n_workers=workers, dashboard=False, quiet=True) as client:
            # every worker's one-time start-up: imports, numba, the CQT filter bank
            client.run(featurize.featurize_item, Item(id="warm", source=str(paths[0])), modality="audio")
            t = time.perf_counter()
            s = featurize.run(str(work / "audio"), str(out), client=client, kind="audio",
                              partition_size=50, progress=False)
            secs[workers] = time.perf_counter() - t
        assert s.items == args.n, s
    per_core = secs[1] / args.n
    pms = [song(100 + k) for k in range(5)]
    midi_cqt(pms[0])
    t = time.perf_counter()
    minutes = 0.0
    for pm in pms:
        midi_cqt(pm)
        minutes += pm.get_end_time() / 60
    synth = (time.perf_counter() - t) / minutes
    print(f"featurize audio, 1 worker : {per_core * 1e3:7.1f} ms per 30 s preview per core "
          f"({30 / per_core:.0f}x real time; decode + CQT + write, {args.n} previews)")
    print(f"librosa.cqt alone         : {cqt_alone * 1e3:7.1f} ms per preview "
          f"(stage / CQT alone = {per_core / cqt_alone:.2f}x)")
    print(f"featurize audio, 2 workers: {secs[2] / args.n * 1e3:7.1f} ms per preview wall; "
          f"speed-up 2 over 1 = {secs[1] / secs[2]:.2f}x")
    print(f"MIDI fluidsynth + CQT     : {synth:7.2f} s per minute of music")


if __name__ == "__main__":
    main()
