"""PSE recall at shares of the database, for model selection on a dev set.

For each query of the chosen splits, the rank of its true preview among all
previews of the database by PSE distance; recall at share ``s`` is the
fraction of queries whose true preview ranks within ``ceil(s * n_db)``.
Models are run straight from their ONNX files (no store is written), so
several model directories with the same model names can be compared on the
same stores.  A PSE model with a hub reference ranks as the prune does
(:mod:`msdmatch.kernels.hub`); the row ``whole, no hub`` ranks without it.  ``--windows SECONDS:HOP`` also embeds each query as windows of
that length (last window flush with the end) and ranks by the minimum
distance over windows (:func:`msdmatch.kernels.prune.topk_multi`).

    python benchmarks/pse_recall.py --corpus DIR --db DB.zarr \\
        --queries synth=Q-SYNTH.zarr --queries pianoroll=Q-PR.zarr \\
        --models shipped=msdmatch/shipped --models new=/tmp/models [--windows 30:15] \\
        [--splits valid,test] [--generated] [--distractors STORE=CORPUS] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

SHARES = (0.001, 0.005, 0.01, 0.02, 0.05, 0.10)


def truth_for(corpus: Path, splits: set[str], *, generated: bool = False) -> dict[str, set[str]]:
    """``query_id -> {track_id}`` for the queries of ``splits`` (split.csv).

    With ``generated``, also every generated song's query (recordings.jsonl
    ``source == ''``): a corpus of another seed than the training corpus's has
    no generated song in common with it, while music21 works keep their split.
    """
    gen = set()
    if generated:
        with open(corpus / "recordings.jsonl", encoding="utf-8") as fh:
            gen = {r["query_id"] for r in map(json.loads, fh) if r["query_id"] and not r["source"]}
    out: dict[str, set[str]] = {}
    with open(corpus / "split.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["query_id"] and (r["split"] in splits or r["query_id"] in gen):
                out.setdefault(r["query_id"], set()).add(r["track_id"])
    return out


def works(corpus: Path) -> dict[str, str]:
    """``track_id -> music21 work`` ('' for a generated song) of a corpus's previews."""
    with open(corpus / "recordings.jsonl", encoding="utf-8") as fh:
        return {r["track_id"]: r["source"] or "" for r in map(json.loads, fh) if not r["error"]}


def distractors(ids: list[str], corpus: Path, query_works: set[str], have: set[str]) -> list[int]:
    """Indices into ``ids`` (a distractor store's) that may join a database: previews of
    ``corpus`` whose music21 work no query uses, not already in it (``have``)."""
    other = works(corpus)
    return [i for i, t in enumerate(ids) if t in other and other[t] not in query_works and t not in have]


def pse_nets(model_dir: Path, modality: str) -> Path | None:
    """The pse model directory for a MIDI modality inside ``model_dir``, or None."""
    d = model_dir / f"pse-{modality}"
    return d if (d / "model.json").is_file() else None


def embed(seqs, onnx: Path) -> np.ndarray:
    from msdmatch.stages.embed import embed_sequences

    return np.stack(embed_sequences(list(seqs), str(onnx))).astype(np.float32)


def ranks(dist: np.ndarray, truth_cols: list[np.ndarray]) -> np.ndarray:
    """0-based rank of each row's best true column (ties count against it)."""
    out = np.empty(dist.shape[0], np.int64)
    for i, cols in enumerate(truth_cols):
        best = dist[i, cols].min()
        out[i] = int(np.sum(dist[i] < best))
    return out


def recall_curve(r: np.ndarray, n_db: int) -> dict[str, float]:
    return {f"{s:g}": float(np.mean(r < max(1, math.ceil(s * n_db)))) for s in SHARES}


def main() -> None:
    from msdmatch.io.modelfile import load_model
    from msdmatch.io.store import Store
    from msdmatch.kernels.hub import hub_column, hub_scores
    from msdmatch.kernels.prune import query_windows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--db", required=True)
    ap.add_argument("--queries", action="append", required=True, metavar="NAME=STORE")
    ap.add_argument("--models", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--splits", default="valid,test")
    ap.add_argument("--generated", action="store_true",
                    help="also every generated song's query (a dev corpus of another seed)")
    ap.add_argument("--windows", action="append", default=[], metavar="SECONDS:HOP")
    ap.add_argument("--distractors", action="append", default=[], metavar="STORE=CORPUS",
                    help="more previews (never a training corpus): STORE's, but for those of a "
                         "music21 work that is a query's (CORPUS's recordings.jsonl)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    truth = truth_for(a.corpus, set(a.splits.split(",")), generated=a.generated)
    db = Store(a.db)
    db_ids = list(db.strings("ids", 0, db.n))
    db_seqs = db.sequences(0, db.n)
    own = works(a.corpus)
    query_works = {own[t] for ts in truth.values() for t in ts if own.get(t)}
    for spec in a.distractors:
        url, corpus = spec.split("=", 1)
        extra = Store(url)
        ids = list(extra.strings("ids", 0, extra.n))
        seqs = extra.sequences(0, extra.n)
        keep = distractors(ids, Path(corpus), query_works, set(db_ids))
        db_ids += [ids[i] for i in keep]
        db_seqs += [seqs[i] for i in keep]
    col = {t: i for i, t in enumerate(db_ids)}
    n_db = len(db_ids)
    result: dict = {"db": n_db, "splits": a.splits, "recall": {}}
    print(f"db {n_db} previews; splits {a.splits}")
    for spec in a.models:
        mname, mdir = spec.split("=", 1)
        for qspec in a.queries:
            qname, qurl = qspec.split("=", 1)
            qs = Store(qurl)
            d = pse_nets(Path(mdir), qs.modality)
            if d is None:
                continue
            ids = list(qs.strings("ids", 0, qs.n))
            keep = [i for i, q in enumerate(ids) if q in truth and any(t in col for t in truth[q])]
            seqs = qs.sequences(0, qs.n)
            seqs = [seqs[i] for i in keep]
            cols = [np.array([col[t] for t in truth[ids[i]] if t in col]) for i in keep]
            t0 = time.perf_counter()
            E_db = embed(db_seqs, d / "audio.onnx").astype(np.float64)
            E_q = embed(seqs, d / "midi.onnx").astype(np.float64)
            dist = ((E_q**2).sum(1)[:, None] - 2 * E_q @ E_db.T + (E_db**2).sum(1)[None])
            rows = {}
            info = load_model(d)
            if info.hub is not None:  # the prune's ranking (msdmatch.kernels.hub), and without it
                rows["whole, no hub"] = recall_curve(ranks(dist, cols), n_db)
                hub_col = hub_column(hub_scores(E_db, info.reference(), k=info.hub["k"]), info.hub["weight"])
                dist = dist + np.square(hub_col.astype(np.float64))[None]
            rows["whole"] = recall_curve(ranks(dist, cols), n_db)
            for w in a.windows:
                sec, hop = (float(x) for x in w.split(":"))
                fr = qs.params.frame_rate
                offs = [query_windows(len(s), length=int(round(sec * fr)), hop=int(round(hop * fr)))
                        for s in seqs]
                wins = [s[o : o + int(round(sec * fr))] for s, off in zip(seqs, offs) for o in off]
                E_w = embed(wins, d / "midi.onnx").astype(np.float64)
                dw = ((E_w**2).sum(1)[:, None] - 2 * E_w @ E_db.T + (E_db**2).sum(1)[None])
                if info.hub is not None:
                    dw += np.square(hub_col.astype(np.float64))[None]
                owner = np.repeat(np.arange(len(seqs)), [len(o) for o in offs])
                dmin = np.full_like(dist, np.inf)
                np.minimum.at(dmin, owner, dw)
                rows[f"windows {w}"] = recall_curve(ranks(dmin, cols), n_db)
                rows[f"windows {w} + whole"] = recall_curve(ranks(np.minimum(dmin, dist), cols), n_db)
                rows[f"windows {w}"]["vectors_per_query"] = float(len(wins) / len(seqs))
            for k, v in rows.items():
                print(f"{mname:10s} {qname:10s} {k:22s} n={len(seqs)} " +
                      " ".join(f"{s}:{x:.3f}" for s, x in v.items()))
            result["recall"].setdefault(mname, {})[qname] = dict(rows, queries=len(seqs),
                                                                 seconds=time.perf_counter() - t0)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
