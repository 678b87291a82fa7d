"""Transcription frames as the PSE's audio features: basic-pitch note posteriors, measured.

A research benchmark for issue 22 (docs/experiments.md, "A transcription front end").  The
audio side of the piano-roll nets sees, instead of the 48-bin CQT, the note posteriors of
Spotify's basic-pitch model (Apache-2.0), pooled to msdmatch's frame rate and cut to the same 48
pitches, so the training code and nets run unchanged.  Nothing here is part of the product: the
frames live in ``.npz`` files and reach the trainer as :class:`msdmatch.models.pairs.MemoryStore`.
Models trained here expect note frames on the audio side, but their ``model.json`` records the
CQT's feature parameters (the product has no such feature kind yet): keep them out of
``msdmatch embed`` and ``match``.

Build step (a package registry, no download at run time): the model file from the wheel::

    pip download basic-pitch==0.4.0 --no-deps -d /tmp/bp && unzip -o /tmp/bp/*.whl -d /tmp/bp/x
    ONNX=/tmp/bp/x/basic_pitch/saved_models/icassp_2022/nmp.onnx

Steps (each prints what it did; ``frames`` splits its list with ``--shard I/N`` for more cores)::

    python benchmarks/pse_transcription.py frames --onnx $ONNX --audio DIR_OR_LIST --out F.npz
    python benchmarks/pse_transcription.py train --frames F.npz --queries Q-PR.zarr \\
        --truth split.csv --out MODELS --minutes 24
    python benchmarks/pse_transcription.py recall --corpus DEV --frames DEV.npz --cqt DEV/db.zarr \\
        --queries DEV/q-pianoroll.zarr --distractors DIS=DIS.npz --models notes=MODELS:notes \\
        --models shipped=msdmatch/shipped:cqt --generated

``--audio`` takes a folder of audio files or a text file of ``track_id<TAB>path`` lines (a
training store's ids with their files).  ``recall`` ranks each query's true preview among the
dev corpus's previews plus the distractor corpus's (``--distractors CORPUS=FRAMES.npz``, shards
joined by commas; its CQT store is ``CORPUS/db.zarr``), per model and for every pair of models by the sum of their squared
distances, each divided by its median (what one concatenated vector would rank).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

#: basic-pitch's framing (its constants.py): 22,050 Hz, hop 256, 2 s windows less one hop,
#: 30 overlapping output frames per window, half of them dropped at each end.
SR = 22050
WINDOW = 2 * SR - 256
OVERLAP = 30 * 256
HOP = WINDOW - OVERLAP
FPS = SR // 256
#: Output of the note (sustained) posteriors in the ONNX graph; MIDI 21 is its bin 0.
NOTE_OUTPUT = "StatefulPartitionedCall:1"
#: Frames pooled into one of msdmatch's (hop 1,024) and the pitches kept (MIDI 36-83).
POOL = 4
LOW, N_BINS = 36 - 21, 48


def windows(y: np.ndarray) -> np.ndarray:
    """Cut audio at 22,050 Hz into basic-pitch's model inputs.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]

    Returns
    -------
    x : np.ndarray [shape=(w, WINDOW, 1), dtype=float32]
        ``OVERLAP // 2`` zeros in front, windows every ``HOP`` samples, the last zero-padded.
    """
    y = np.concatenate([np.zeros(OVERLAP // 2, np.float32), np.asarray(y, np.float32)])
    starts = range(0, len(y), HOP)
    x = np.zeros((len(starts), WINDOW, 1), np.float32)
    for j, s in enumerate(starts):
        seg = y[s : s + WINDOW]
        x[j, : len(seg), 0] = seg
    return x


def unwrap(out: np.ndarray, n_samples: int) -> np.ndarray:
    """Model outputs ``(w, frames, bins)`` to ``(n_samples * FPS // SR, bins)``, overlaps dropped."""
    half = OVERLAP // 256 // 2
    return out[:, half:-half].reshape(-1, out.shape[-1])[: int(n_samples * FPS / SR)]


def note_frames(posteriors: np.ndarray) -> np.ndarray:
    """Note posteriors ``(t, 88)`` at 86 frames/s to frames like the stored CQT's.

    Returns
    -------
    frames : np.ndarray [shape=(t // POOL, 48), dtype=float32]
        Max over ``POOL`` frames, MIDI 36-83, L2-normalised (all-quiet frames stay zero).
    """
    t = len(posteriors) // POOL
    p = posteriors[: t * POOL].reshape(t, POOL, -1).max(axis=1)[:, LOW : LOW + N_BINS]
    n = np.linalg.norm(p, axis=1, keepdims=True)
    return np.where(n > 1e-3, p / np.maximum(n, 1e-9), 0.0).astype(np.float32)


def transcribe(path: str, session) -> np.ndarray:
    """Frames ``(t, 48)`` of one audio file (decoded and resampled to 22,050 Hz)."""
    from scipy.signal import resample_poly

    from msdmatch.io.decode import decode_audio

    with open(path, "rb") as fh:
        y, sr = decode_audio(fh.read(), max_seconds=600)
    if sr != SR:
        g = math.gcd(sr, SR)
        y = resample_poly(y, SR // g, sr // g)
    x = windows(y)
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run([NOTE_OUTPUT], {name: x[b : b + 16]})[0] for b in range(0, len(x), 16)])
    return note_frames(unwrap(out, len(y)))


def save(path: str, ids: list[str], seqs: list[np.ndarray]) -> None:
    np.savez(path, ids=np.array(ids), lens=np.array([len(s) for s in seqs], np.int64),
             data=np.concatenate(seqs).astype(np.float16) if seqs else np.zeros((0, N_BINS), np.float16))


def load(paths: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """Ids and frames of one or more ``frames`` outputs (shards), in order."""
    ids: list[str] = []
    seqs: list[np.ndarray] = []
    for p in paths:
        z = np.load(p)
        data, off = z["data"], np.concatenate([[0], np.cumsum(z["lens"])])
        ids += [str(s) for s in z["ids"]]
        seqs += [data[a:b].astype(np.float32) for a, b in zip(off[:-1], off[1:])]
    return ids, seqs


def cmd_frames(a) -> None:
    import onnxruntime as ort

    src = Path(a.audio)
    if src.is_dir():
        from msdmatch.io.sources import AUDIO_EXTENSIONS

        rows = [(p.stem, str(p)) for p in sorted(src.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS]
    else:
        rows = [tuple(line.rstrip("\n").split("\t")) for line in src.open() if line.strip()]
    i, n = (int(v) for v in a.shard.split("/"))
    rows = rows[i::n]
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    ids, seqs, t0 = [], [], time.process_time()
    for tid, path in rows:
        try:
            seqs.append(transcribe(path, sess))
            ids.append(tid)
        except Exception as e:  # a research script: report and go on
            print(f"failed {tid}: {e}", file=sys.stderr)
    save(a.out, ids, seqs)
    cpu = time.process_time() - t0
    print(f"{len(ids)} of {len(rows)} files -> {a.out}; {cpu / max(len(rows), 1):.2f} s CPU per file")


def cmd_train(a) -> None:
    from msdmatch.models.pairs import MemoryStore, as_store
    from msdmatch.models.train import default_hparams, train_models

    qs = as_store(a.queries)
    ids, seqs = load(a.frames)
    db = MemoryStore(ids, seqs, modality="audio", params=qs.params)
    hp = {k: default_hparams(k, augment=0.0) for k in ("dhs", "pse")}  # augment_audio imitates CQT conditions
    train_models(qs, db, a.truth, out_dir=a.out, kind="both", seed=a.seed, max_minutes=a.minutes,
                 hparams=hp, report=False, progress=print)


def cmd_recall(a) -> None:
    from pse_recall import distractors, embed, ranks, recall_curve, truth_for, works

    from msdmatch.io.store import Store

    truth = truth_for(a.corpus, set(a.splits.split(",")), generated=a.generated)
    own = works(a.corpus)
    query_works = {own[t] for ts in truth.values() for t in ts if own.get(t)}
    st = Store(a.cqt)
    cqt = dict(zip(st.strings("ids", 0, st.n), st.sequences(0, st.n)))
    notes = dict(zip(*load(a.frames)))
    for spec in a.distractors:
        corpus, frames = spec.split("=", 1)
        ex = Store(f"{corpus}/db.zarr")
        ids = list(ex.strings("ids", 0, ex.n))
        extra_notes = dict(zip(*load(frames.split(","))))
        seqs = ex.sequences(0, ex.n)
        for i in distractors(ids, Path(corpus), query_works, set(cqt)):
            if ids[i] in extra_notes:
                cqt[ids[i]], notes[ids[i]] = seqs[i], extra_notes[ids[i]]
    db_ids = sorted(set(cqt) & set(notes))
    col = {t: i for i, t in enumerate(db_ids)}
    qs = Store(a.queries)
    qids = list(qs.strings("ids", 0, qs.n))
    keep = [i for i, q in enumerate(qids) if q in truth and any(t in col for t in truth[q])]
    qseq = qs.sequences(0, qs.n)
    cols = [np.array([col[t] for t in truth[qids[i]] if t in col]) for i in keep]
    n_db = len(db_ids)
    print(f"{len(keep)} queries, {n_db} previews (1% = {math.ceil(0.01 * n_db)})")
    dist = {}
    for spec in a.models:
        name, rest = spec.split("=", 1)
        mdir, feats = rest.rsplit(":", 1)
        d = Path(mdir) / f"pse-{qs.modality}"
        src = notes if feats == "notes" else cqt
        eq = embed([qseq[i] for i in keep], d / "midi.onnx").astype(np.float64)
        ed = embed([src[t] for t in db_ids], d / "audio.onnx").astype(np.float64)
        dist[name] = (eq**2).sum(1)[:, None] - 2 * eq @ ed.T + (ed**2).sum(1)[None]
    rows = dict(dist)
    for x, y in itertools.combinations(dist, 2):
        rows[f"{x}+{y}"] = dist[x] / np.median(dist[x]) + dist[y] / np.median(dist[y])
    for name, d in rows.items():
        curve = recall_curve(ranks(d, cols), n_db)
        print(f"{name:24s} " + " ".join(f"{s}:{v:.3f}" for s, v in curve.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("frames")
    f.add_argument("--onnx", required=True)
    f.add_argument("--audio", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--shard", default="0/1")
    t = sub.add_parser("train")
    t.add_argument("--frames", action="append", required=True)
    t.add_argument("--queries", required=True, help="piano-roll query store")
    t.add_argument("--truth", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=24.0)
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("recall")
    r.add_argument("--corpus", required=True, type=Path)
    r.add_argument("--frames", action="append", required=True)
    r.add_argument("--cqt", required=True, help="the same previews' CQT store")
    r.add_argument("--queries", required=True)
    r.add_argument("--distractors", action="append", default=[], metavar="CORPUS=FRAMES.npz[,SHARD.npz]")
    r.add_argument("--models", action="append", required=True, metavar="NAME=DIR:notes|cqt")
    r.add_argument("--splits", default="valid,test")
    r.add_argument("--generated", action="store_true",
                   help="also every generated song's query (a dev corpus of another seed)")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"frames": cmd_frames, "train": cmd_train, "recall": cmd_recall}[a.cmd](a)


if __name__ == "__main__":
    main()
