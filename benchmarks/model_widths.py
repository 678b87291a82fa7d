"""Size, speed and validation recall of trained models: the README's width table.

For each model directory it prints the parameter count, the size of both
ONNX files, the time per 30 s preview (646 frames, batches of 16) through the
audio net with onnxruntime on one thread (best of 5), the validation BC from
``model.json``, and how the model ranks each validation query's true preview
among every preview of the database store:

* DHS: by the DHS ratio (Hamming-DTW score / mean of the Hamming distance
  matrix), scored by ``msdmatch.stages.match.rerank.shard_rerank`` as ``msdmatch match``
  scores; recall in the top 10 and 15;
* PSE: by Euclidean distance; recall in the top 1% (the issue's target), 2%,
  5% and 10% of the database (the ``--prune-k`` trade-off).

Usage::

    python benchmarks/model_widths.py --queries data/train/q-synth.zarr --db data/train/db.zarr \\
        --truth data/train_corpus/split.csv MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _timing import best_time  # noqa: E402

from msdmatch.io.modelfile import check_compatible, load_model, run_net  # noqa: E402
from msdmatch.io.store import Store  # noqa: E402
from msdmatch.kernels.dtw import bit_frequencies  # noqa: E402
from msdmatch.models.pairs import read_truth  # noqa: E402
from msdmatch.stages.embed import embed_sequences, pack_bits  # noqa: E402
from msdmatch.stages.match.plan import DbShard  # noqa: E402
from msdmatch.stages.match.rerank import shard_rerank  # noqa: E402


def ms_per_preview(onnx: str, repeats: int = 5) -> float:
    x = np.random.default_rng(0).standard_normal((16, 646, 48)).astype(np.float32)
    m = np.ones((16, 646), np.float32)
    run_net(onnx, x, m, threads=1)
    return best_time(lambda: run_net(onnx, x, m, threads=1), repeats) / 16 * 1e3


def true_ranks(info, Q, D, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Rank of each pair's true database row among all rows (1 = first)."""
    qp = str(check_compatible(info, store_params=Q.params, store_modality=Q.modality))
    dp = str(check_compatible(info, store_params=D.params, store_modality=D.modality))
    ds = info.downsample if info.kind == "dhs" else None
    db: list = []
    for a in range(0, D.n, 128):
        db += embed_sequences(D.sequences(a, min(a + 128, D.n)), dp, downsample=ds)
    qs = embed_sequences([Q.sequence(q) for q, _ in pairs], qp, downsample=ds)
    true = np.array([d for _, d in pairs])
    if info.kind == "pse":
        E = np.stack(db)
        d = ((np.stack(qs)[:, None, :] - E[None]) ** 2).sum(-1)
        return (d < d[np.arange(len(pairs)), true][:, None]).sum(1) + 1
    words = [pack_bits(h) for h in db]
    off = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    flat = np.concatenate(words)
    data = {"shard": DbShard(0, 0, D.n), "words": flat, "offsets": off,
            "ok": np.diff(off) > 0, "bits": bit_frequencies(flat, off)}
    every = np.arange(D.n)
    scored = shard_rerank(data, [pack_bits(h) for h in qs], [every] * len(qs))
    return np.array([int((s / mm < s[t] / mm[t]).sum()) + 1 for (s, mm), t in zip(scored, true)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--truth", required=True, help="split.csv with query_id, track_id, split")
    ap.add_argument("--split", default="valid")
    args = ap.parse_args()
    Q, D = Store(args.queries), Store(args.db)
    qi = {q: i for i, q in enumerate(Q.ids)}
    di = {d: i for i, d in enumerate(D.ids)}
    pairs = [(qi[q], di[t]) for q, t, s in read_truth(args.truth)
             if s == args.split and q in qi and t in di]
    print(f"# {len(pairs)} {args.split} queries from {args.queries} against {D.n} previews of {args.db}")
    print(f"{'model':50s} {'params':>9s} {'MB':>6s} {'ms/preview':>10s} {'BC':>6s}  recall")
    for mdir in args.models:
        info = load_model(mdir)
        meta = json.loads(open(os.path.join(mdir, "model.json")).read())
        mb = sum(os.path.getsize(os.path.join(mdir, f)) for f in meta["files"].values()) / 1e6
        ms = ms_per_preview(os.path.join(mdir, meta["files"]["audio"]))
        r = true_ranks(info, Q, D, pairs)
        recall = (", ".join(f"top {p}%: {np.mean(r <= max(1, D.n * p // 100)):.3f}" for p in (1, 2, 5, 10))
                  if info.kind == "pse" else f"top 10: {np.mean(r <= 10):.3f}, top 15: {np.mean(r <= 15):.3f}")
        print(f"{mdir:50s} {meta['n_parameters']:9d} {mb:6.2f} {ms:10.2f} {meta['metrics']['bc']:6.3f}  {recall}")


if __name__ == "__main__":
    main()
