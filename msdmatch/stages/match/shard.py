"""A database shard on a worker: its loaded arrays, and the helpers the shard stages share.

Conventions
-----------
- A loaded shard (:func:`load_shard`) is a dict of its rows' PSE
  embeddings ``E`` (n, 129) float32 with their hub coordinate
  (:func:`msdmatch.io.store.prune_vectors`), packed DHS words with local
  ``offsets``, bit frequencies, the DHS hub terms ``dhs_hub`` (n,) (weight
  times ``hub/<dhs>``, 0 without one; :mod:`msdmatch.kernels.hub`) and int8
  screen frames; failed items get
  embeddings far from everything (1e6) and ``ok`` False.
- Candidate indices are global database rows (int64).  A shard works only
  on the candidates inside ``start:stop``.
- The shard stages (:mod:`~msdmatch.stages.match.prune`,
  :mod:`~msdmatch.stages.match.rerank`, :mod:`~msdmatch.stages.match.screen`)
  take a query batch (:func:`msdmatch.stages.match.batch.load_queries`)
  and return a dict with the results and ``cpu`` (thread CPU-seconds spent);
  a query whose kernel raises is reported in ``failed`` (local query index ->
  reason) instead of failing the batch.
"""
from __future__ import annotations

import numpy as np

from msdmatch.stages.match.plan import DbShard


def load_shard(shard: DbShard, *, url: str, pse: str, dhs: str, storage_options: dict | None = None) -> dict:
    """Load one database shard's embeddings, hash sequences, bit frequencies and screen frames."""
    from msdmatch.io.store import open_group, prune_vectors
    from msdmatch.kernels.dtw import bit_frequencies

    g = open_group(url, storage_options=storage_options)
    E = prune_vectors(g, pse, shard.start, shard.stop)
    off = np.asarray(g[f"dhs/{dhs}/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    words = np.asarray(g[f"dhs/{dhs}/words"][off[0] : off[-1]], dtype=np.uint32)
    ok = np.all(np.isfinite(E), axis=1) & (np.diff(off) > 0)
    E[~ok] = 1e6  # failed items: far from everything
    soff = np.asarray(g["screen/offsets"][shard.start : shard.stop + 1], dtype=np.int64)
    hub = f"hub/{dhs}"
    term = (float(g[hub].attrs["weight"]) * np.asarray(g[hub][shard.start : shard.stop], np.float64)
            if hub in g else np.zeros(shard.stop - shard.start))
    return {"shard": shard, "E": E, "norms": np.einsum("ij,ij->i", E, E), "words": words,
            "offsets": off - off[0], "ok": ok, "bits": bit_frequencies(words, off - off[0]), "dhs_hub": term,
            "screen": np.asarray(g["screen/frames"][soff[0] : soff[-1]], dtype=np.int8),
            "screen_offsets": soff - soff[0]}


def in_shard(data: dict, rows: np.ndarray) -> np.ndarray:
    """Which of the global ``rows`` (np.ndarray, int64) live in this shard, np.ndarray bool."""
    s = data["shard"]
    return (rows >= s.start) & (rows < s.stop)


def owners(shards, rows: np.ndarray) -> np.ndarray:
    """Index of the shard that holds each global row, np.ndarray [shape=rows.shape, int64]."""
    return np.searchsorted([s.stop for s in shards], rows, side="right")


def per_query(fn, items, skip) -> tuple[list, dict[int, str]]:
    """``fn(*item)`` per query; a query that raises is recorded, not fatal."""
    from msdmatch.executor import one_line

    out: list = []
    failed: dict[int, str] = {}
    for q, item in enumerate(items):
        if q in skip:
            out.append(None)
            continue
        try:
            out.append(fn(*item))
        except Exception as e:  # noqa: BLE001 - one query's error must not fail its batch
            out.append(None)
            failed[q] = one_line(e)
    return out, failed

