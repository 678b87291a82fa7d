"""The match job's plan: database shards, query batches and the identity of a run.

Conventions
-----------
- The database is split into contiguous shards (:class:`DbShard`) that stay
  loaded on the workers for the whole job; the queries into contiguous
  batches (:class:`QueryBatch`) of store rows ``start:stop``.  A batch is
  the unit of work and of commit: its rows reach MATCHES as one part.
- Everything here is pure: no I/O, no cluster.
- :func:`run_identity` is what an existing MATCHES output must agree with
  to be resumed: the match parameters, the database (its size, a digest of
  its ids and the embedding models) and the query store's ids so far.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from msdmatch.errors import ParameterError
from msdmatch.params import MATCH

#: Queries per batch by default: one batch's (queries x K) arrays at K = 10,000
#: are 256 x 10,000 x 8 bytes = 20 MB each.
DEFAULT_BATCH_SIZE = MATCH.batch_size


@dataclass(frozen=True)
class DbShard:
    """Database rows ``start:stop``."""

    sid: int
    start: int
    stop: int


@dataclass(frozen=True)
class QueryBatch:
    """Query store rows ``start:stop``, the unit of work and of commit."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        """The batch's name in MATCHES (its part file), sortable in query order."""
        return f"{self.start:010d}-{self.stop:010d}"

    @property
    def size(self) -> int:
        """Queries in the batch."""
        return self.stop - self.start


@dataclass(frozen=True)
class MatchParams:
    """The parameters that decide a MATCHES table's rows (recorded with it).

    Attributes
    ----------
    prune_k, rerank, verify : int
        K, R and V after clipping to the database.
    keep : {'rerank', 'all'}
    pse, dhs : str
        Embedding model names.
    fusion : str
        Digest of the fusion model's JSON, or ``'none'``.
    threshold : float
        A query's top row is ``matched`` when its confidence reaches it.
    screen_order : int
        :data:`msdmatch.kernels.screen.ORDER_VERSION`: the rule that picks the verified rows.
    models : str
        ``'<pse>:<digest>|<dhs>:<digest>'``: the versions of the models matched with.
    """

    prune_k: int
    rerank: int
    verify: int
    keep: str
    pse: str
    dhs: str
    fusion: str
    threshold: float
    screen_order: int
    models: str

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


def plan(n_db: int, *, n_shards: int) -> list[DbShard]:
    """Split ``n_db`` rows into ``n_shards`` contiguous shards of near-equal size."""
    n_shards = max(1, min(n_shards, n_db))
    cuts = np.linspace(0, n_db, n_shards + 1).round().astype(int)
    return [DbShard(i, int(a), int(b)) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


def plan_batches(n_queries: int, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 done: Iterable[tuple[int, int]] = ()) -> list[QueryBatch]:
    """The batches still to run: query rows ``0:n_queries`` not covered by ``done``.

    Parameters
    ----------
    n_queries : int >= 0
    batch_size : int >= 1
    done : iterable of (start, stop)
        Row ranges already committed (they may come from another batch size).

    Returns
    -------
    batches : list of QueryBatch
        In row order; each gap between committed ranges is cut into batches of
        ``batch_size`` rows from its start, so a gap left by an interrupted run
        is planned as that run planned it.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ParameterError(f"--batch-size must be a positive integer, got {batch_size!r}")
    covered = np.zeros(n_queries, bool)
    for a, b in done:
        covered[max(0, a) : min(n_queries, b)] = True
    out = []
    i = 0
    while i < n_queries:
        if covered[i]:
            i += 1
            continue
        j = i
        while j < n_queries and not covered[j] and j - i < batch_size:
            j += 1
        out.append(QueryBatch(i, j))
        i = j
    return out


def ids_digest(chunks: Iterable[Iterable[str]]) -> str:
    """SHA-256 of ids given chunk by chunk (so a million ids need not be held at once)."""
    h = hashlib.sha256()
    for chunk in chunks:
        for s in chunk:
            h.update(str(s).encode())
            h.update(b"\n")
    return h.hexdigest()


def run_identity(params: MatchParams, *, db_n: int, db_ids: str, queries_n: int, queries_ids: str) -> dict:
    """What MATCHES records about the run that made it (its metadata's ``run`` entry).

    Parameters
    ----------
    params : MatchParams
    db_n, queries_n : int
        Items in the database and query stores.
    db_ids, queries_ids : str
        :func:`ids_digest` of their ids.
    """
    return {"params": params.to_dict(),
            "db": {"n": int(db_n), "ids_sha256": db_ids, "pse": params.pse, "dhs": params.dhs},
            "queries": {"n": int(queries_n), "ids_sha256": queries_ids}}


def differences(recorded: dict, current: dict) -> list[str]:
    """What differs between a recorded run identity and the current one, as short phrases.

    Query stores that only grew are not a difference (their first ids are
    compared by the caller); a smaller or rewritten query store is.
    """
    out = []
    if recorded.get("db") != current.get("db"):  # first: K, R and V follow from the DB's size
        r, c = recorded.get("db", {}), current.get("db", {})
        what = "size" if r.get("n") != c.get("n") else "ids or models"
        out.append(f"the DB changed since (its {what}: {r.get('n')} -> {c.get('n')} items)")
    for k, v in current.get("params", {}).items():
        old = recorded.get("params", {}).get(k)
        if old != v:
            out.append(f"{k} {old!r} -> {v!r}")
    return out
