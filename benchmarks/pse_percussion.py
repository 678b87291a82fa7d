"""Does suppressing percussion at featurization help the shipped PSE?  (issue 22, dev sets only)

Re-featurizes a dev set's database previews from their sources (CQT magnitude computed once per
preview, then each variant applied before the dB scale: median-filter harmonic/percussive
separation on the 48-bin CQT, a per-bin noise floor) and its synth queries (re-synthesized with
and without drum tracks), embeds them with the shipped PSE nets, no retraining, and prints PSE
recall at shares of the database per variant, also split by the dev plan's loud drums and SNR.
The database is built as ``pse_recall.py`` builds it (the dev previews plus ``--distractors``
previews of works no query uses).  Never run it on the real-material set.

    python benchmarks/pse_percussion.py --corpus DEV --db DEV/db.zarr \\
        --queries synth=DEV/q-synth.zarr --queries pianoroll=DEV/q-pianoroll.zarr \\
        --distractors DEMO/db.zarr=DEMO [--variants base,hpss17x9m1] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from pse_recall import embed, ranks, recall_curve, truth_for, works


def cqt_magnitude(y: np.ndarray, *, tuning: float) -> np.ndarray:
    """|CQT| [shape=(48, n_frames)] with the feature geometry of ``msdmatch.kernels.features``."""
    import librosa

    from msdmatch.kernels import features
    from msdmatch.params import DEFAULT_PARAMS as P

    features._reuse_cqt_filters()
    return np.abs(librosa.cqt(y, sr=P.sr, hop_length=P.hop_length, fmin=P.fmin_hz, n_bins=P.n_bins,
                              bins_per_octave=P.bins_per_octave, tuning=tuning)).astype(np.float32)


def to_features(C: np.ndarray) -> np.ndarray:
    """dB re the clip maximum, 80 dB floor, L2-normalised frames: ``features.audio_cqt``'s tail."""
    import librosa

    from msdmatch.kernels.features import unit_frames
    from msdmatch.params import DEFAULT_PARAMS as P

    S = librosa.amplitude_to_db(C, ref=float(np.max(C)), top_db=P.top_db)
    return unit_frames((S + P.top_db).T)


def harmonic(C: np.ndarray, *, time_frames: int, freq_bins: int, margin: float = 1.0,
             power: float = 2.0) -> np.ndarray:
    """Harmonic part of a magnitude spectrogram [shape=(bins, frames)] by median-filter HPSS.

    Fitzgerald's soft mask H^p / (H^p + (margin P)^p), H the median over ``time_frames``
    frames, P the median over ``freq_bins`` bins.
    """
    from scipy.ndimage import median_filter

    H = median_filter(C, size=(1, time_frames), mode="reflect").astype(np.float64) ** power
    Pm = (margin * median_filter(C, size=(freq_bins, 1), mode="reflect").astype(np.float64)) ** power
    z = H + Pm
    return (C * np.divide(H, z, out=np.zeros_like(H), where=z > 1e-30)).astype(np.float32)


def noise_floor(C: np.ndarray, *, quantile: float = 0.2) -> np.ndarray:
    """Subtract each bin's ``quantile`` over time (a stationary noise floor), clipped at 0."""
    return np.maximum(C - np.quantile(C, quantile, axis=1, keepdims=True), 0.0)


VARIANTS = {
    "base": lambda C: C,
    "hpss17x9m1": lambda C: harmonic(C, time_frames=17, freq_bins=9),
    "hpss17x9m2": lambda C: harmonic(C, time_frames=17, freq_bins=9, margin=2.0),
    "hpss31x9m1": lambda C: harmonic(C, time_frames=31, freq_bins=9),
    "hpss9x9m1": lambda C: harmonic(C, time_frames=9, freq_bins=9),
    "floor20": noise_floor,
    "hpss17x9m1+floor20": lambda C: noise_floor(harmonic(C, time_frames=17, freq_bins=9)),
}


def main() -> None:
    import librosa

    from msdmatch.io import decode
    from msdmatch.io.store import Store
    from msdmatch.io.synth import render
    from msdmatch.kernels import features
    from msdmatch.params import DEFAULT_PARAMS as P

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--db", required=True)
    ap.add_argument("--queries", action="append", required=True, metavar="NAME=STORE")
    ap.add_argument("--distractors", action="append", default=[], metavar="STORE=CORPUS")
    ap.add_argument("--models", default="msdmatch/shipped", type=Path)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    truth = truth_for(a.corpus, {"valid", "test"}, generated=True)
    db = Store(a.db)
    ids, srcs = list(db.strings("ids", 0, db.n)), list(db.strings("sources", 0, db.n))
    own = works(a.corpus)
    query_works = {own[t] for ts in truth.values() for t in ts if own.get(t)}
    for spec in a.distractors:
        url, corpus = spec.split("=", 1)
        other, extra = works(Path(corpus)), Store(url)
        have = set(ids)
        for t, s in zip(extra.strings("ids", 0, extra.n), extra.strings("sources", 0, extra.n)):
            if t in other and other[t] not in query_works and t not in have:
                ids.append(t)
                srcs.append(s)
    col = {t: i for i, t in enumerate(ids)}
    n_db, k1 = len(ids), math.ceil(0.01 * len(ids))
    plans = {}  # query_id -> (loud drums, snr < 20 dB) from the corpus's recording plans
    with open(a.corpus / "recordings.jsonl", encoding="utf-8") as fh:
        for r in map(json.loads, fh):
            plan = r.get("plan") or {}
            if r["query_id"] and "drum_boost" in plan:  # realistic style; a duplicate's row has none
                plans[r["query_id"]] = (bool(plan["drum_boost"]), plan["fx"]["snr_db"] < 20)
    t0 = time.process_time()
    mags = []
    for s in srcs:
        y, sr = decode.decode_audio(decode.read_bytes(s, max_bytes=decode.MAX_AUDIO_BYTES), max_seconds=600)
        y = librosa.resample(y, orig_sr=sr, target_sr=P.sr, res_type="soxr_hq") if sr != P.sr else y
        mags.append(cqt_magnitude(y, tuning=features.estimate_tuning(y, P.sr)))
    print(f"db {n_db} previews (1% = {k1}); CQT {time.process_time() - t0:.0f} s CPU", flush=True)
    stores = {name: Store(url) for name, url in (q.split("=", 1) for q in a.queries)}
    synth_mags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for qs in stores.values():
        if qs.modality != "midi-synth":
            continue
        for q, s in zip(qs.strings("ids", 0, qs.n), qs.strings("sources", 0, qs.n)):
            if q in truth:
                pm = decode.decode_midi(decode.read_bytes(s, max_bytes=decode.MAX_MIDI_BYTES))
                with_drums = cqt_magnitude(render(pm, sr=P.sr), tuning=0.0)
                pm.instruments = [i for i in pm.instruments if not i.is_drum]
                synth_mags[q] = (with_drums, cqt_magnitude(render(pm, sr=P.sr), tuning=0.0))
    result: dict = {"db": n_db, "recall": {}}
    for vname in a.variants.split(","):
        f = VARIANTS[vname]
        t0 = time.process_time()
        feats = [to_features(f(C)) for C in mags]
        cpu_ms = (time.process_time() - t0) / n_db * 1e3
        for qname, qs in stores.items():
            d = a.models / f"pse-{qs.modality}"
            qids, seqs = list(qs.strings("ids", 0, qs.n)), qs.sequences(0, qs.n)
            keep = [i for i, q in enumerate(qids) if q in truth and any(t in col for t in truth[q])]
            cols = [np.array([col[t] for t in truth[qids[i]] if t in col]) for i in keep]
            E_db = embed(feats, d / "audio.onnx").astype(np.float64)
            qsets = {"stored": [seqs[i].astype(np.float32) for i in keep]}
            if qs.modality == "midi-synth":
                qsets["same"] = [to_features(f(synth_mags[qids[i]][0])) for i in keep]
                qsets["nodrums"] = [to_features(synth_mags[qids[i]][1]) for i in keep]
                qsets["nodrums+same"] = [to_features(f(synth_mags[qids[i]][1])) for i in keep]
            for how, qf in qsets.items():
                E_q = embed(qf, d / "midi.onnx").astype(np.float64)
                r = ranks((E_q**2).sum(1)[:, None] - 2 * E_q @ E_db.T + (E_db**2).sum(1)[None], cols)
                row: dict = recall_curve(r, n_db)
                flags = np.array([plans.get(qids[i], (False, False)) for i in keep], dtype=bool)
                sub = ""
                if plans:
                    for j, label in enumerate(("loud_drums", "snr_lt_20")):
                        m = flags[:, j]
                        row[label] = [float(np.mean(r[m] < k1)) if m.any() else None, int(m.sum()),
                                      float(np.mean(r[~m] < k1)) if (~m).any() else None]
                    sub = (f" | 1% loud drums {row['loud_drums'][0]:.3f} (n={row['loud_drums'][1]}) "
                           f"else {row['loud_drums'][2]:.3f} | snr<20 {row['snr_lt_20'][0]:.3f} "
                           f"(n={row['snr_lt_20'][1]}) else {row['snr_lt_20'][2]:.3f}")
                result["recall"].setdefault(vname, {}).setdefault(qname, {})[how] = row
                print(f"{vname:20s} {qname:10s} q={how:13s} n={len(keep)} "
                      + " ".join(f"{s}:{row[s]:.3f}" for s in ("0.001", "0.005", "0.01", "0.02", "0.05", "0.1"))
                      + sub, flush=True)
        print(f"  ({vname}: {cpu_ms:.1f} ms CPU per preview on top of the CQT)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
