"""Open-set evaluation sets: queries of which a share has no recording in the database.

Most real MIDI files have no preview in the database, so a confidence must be
fitted and measured on queries like that.  This module plans them from demo
corpora (``msdmatch demo-data``): it takes the queries of one split, draws
the share ``fraction`` of them whose true previews (every duplicate too)
are removed from the database, and writes manifests and truth files that the
ordinary stages read.

Conventions
-----------
* A truth table maps each query to the set of its valid track ids (several
  for duplicate previews); an empty set means no match exists.
* Which queries lose their previews is fixed by a hash of ``(seed, query_id)``
  (:func:`removed_queries`), so a plan is reproducible and does not depend on
  the order of the rows.
* ``halves=2`` plans two databases, ``a`` and ``b``, that remove
  complementary halves: every query is then matched once with and once
  without its recording, so one query set gives as many open as closed cases.
* Another corpus (or a distractor) may hold a preview of the query's own
  music: a rendition of the same music21 work, or a folk tune that another
  collection holds under another name with the same melody (O'Neill's and
  Aird's collections share tunes).  Such a preview is a *valid match* of the
  query, not a distractor (:func:`alike_previews`): it joins the query's
  truth in every table and stays in the databases, so a query whose own
  recording was removed but whose tune is still there is not a no-match
  query.  Counting it as wrong put confidences of 0.99-1.0 among the
  "no-match" top-1s of the calibration runs.

Files written by :func:`write_open_set` into ``out_dir``::

    queries.txt        MIDI files of the split's queries (a featurize manifest)
    db-closed.txt      every preview
    db-a.txt, db-b.txt every preview but those of removed half a (b)
    truth-closed.csv   query_id,track_id (one row per valid track)
    truth-a.csv, truth-b.csv   the same, with an empty track_id for removed queries
                       (alike previews stay valid)
    openset.json       counts, seed, fraction, corpora, the alike previews

Run it as ``python -m msdmatch.evaluation.openset CORPUS [EXTRA_CORPUS ...] --split valid --out DIR``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence

from msdmatch.errors import ParameterError

__all__ = ["removed_queries", "truth_sets", "open_truth", "write_open_set", "melody_grams", "same_tune",
           "alike_previews"]

#: Notes of a work's top part that its melody signature reads.
MELODY_NOTES = 64
#: Length of the pitch-interval n-grams of a melody signature.
MELODY_GRAM = 6
#: Two single-part works are one tune when this share of the smaller signature is shared.
SAME_TUNE_OVERLAP = 0.5


def truth_sets(query_ids: Iterable[str], track_ids: Iterable[str]) -> dict[str, set[str]]:
    """Group truth rows by query: ``{query_id: {track_id, ...}}`` (empty ids dropped).

    Parameters
    ----------
    query_ids, track_ids : iterable of str [length n_rows]
        One row per (query, valid track); an empty ``track_id`` marks a query
        with no match.

    Returns
    -------
    sets : dict of str to set of str
        Every query of the rows, with its valid tracks (an empty set for none).
    """
    out: dict[str, set[str]] = {}
    for q, t in zip(query_ids, track_ids, strict=True):
        q, t = str(q), ("" if t is None else str(t))
        out.setdefault(q, set())
        if t and t.lower() != "nan":
            out[q].add(t)
    return out


def removed_queries(queries: Sequence[str], *, fraction: float = 0.5, seed: int = 0) -> set[str]:
    """The ``round(fraction * n)`` queries that lose their recordings.

    Parameters
    ----------
    queries : sequence of str
        Query ids (order does not matter).
    fraction : float in [0, 1]
    seed : int

    Returns
    -------
    removed : set of str
        The queries with the smallest ``blake2b(seed, query_id)``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ParameterError(f"fraction={fraction!r} must be in [0, 1]")
    uq = sorted(set(map(str, queries)))
    key = {q: hashlib.blake2b(f"openset:{seed}:{q}".encode(), digest_size=8).digest() for q in uq}
    return set(sorted(uq, key=key.__getitem__)[: int(round(fraction * len(uq)))])


def open_truth(truth: Mapping[str, set[str]], removed: set[str]) -> dict[str, set[str]]:
    """The truth once the recordings of ``removed`` queries are gone from the database."""
    return {q: (set() if q in removed else set(t)) for q, t in truth.items()}


def melody_grams(pitches, *, n_notes: int = MELODY_NOTES, k: int = MELODY_GRAM) -> frozenset:
    """Transposition-free signature of a melody: the pitch-interval ``k``-grams of its first notes.

    Parameters
    ----------
    pitches : sequence of int [length n]
        MIDI pitches of the melody in order.
    n_notes, k : int

    Returns
    -------
    grams : frozenset of tuple of int [each of length k]
        Empty if the melody has fewer than ``k + 1`` notes.
    """
    p = [int(x) for x in list(pitches)[:n_notes]]
    iv = tuple(b - a for a, b in zip(p[:-1], p[1:]))
    return frozenset(iv[i:i + k] for i in range(len(iv) - k + 1))


def same_tune(a: frozenset, b: frozenset, *, overlap: float = SAME_TUNE_OVERLAP) -> bool:
    """Whether two :func:`melody_grams` signatures are one tune: they share ``overlap`` of the smaller."""
    if not a or not b:
        return False
    return len(a & b) >= overlap * min(len(a), len(b))


def alike_previews(query_work: Mapping[str, str], preview_work: Mapping[str, str],
                   melodies: Mapping[str, tuple[int, frozenset]]) -> dict[str, set[str]]:
    """The previews that render each query's own music, beside its own recordings.

    Parameters
    ----------
    query_work : mapping of query id to work key (music21 source; '' for none)
    preview_work : mapping of track id to work key, for every preview of the
        database except the queries' own recordings
    melodies : mapping of work key to (number of parts, :func:`melody_grams`)
        Works missing here are compared by key only.

    Returns
    -------
    alike : dict of query id to set of track id
        A preview is alike when it renders the same work, or when both works
        are single-part tunes with the same melody (:func:`same_tune`); a
        multi-part work with the same top line (a chorale tune harmonised
        anew) is another piece.  Queries with none are left out.
    """
    by_work: dict[str, set[str]] = {}
    for t, w in preview_work.items():
        if w:
            by_work.setdefault(w, set()).add(t)
    singles = {w: m[1] for w, m in melodies.items() if m[0] == 1 and m[1] and w in by_work}
    out: dict[str, set[str]] = {}
    for q, w in query_work.items():
        if not w:
            continue
        found = set(by_work.get(w, ()))
        mq = melodies.get(w)
        if mq is not None and mq[0] == 1:
            for w2, g in singles.items():
                if w2 != w and same_tune(mq[1], g):
                    found |= by_work[w2]
        if found:
            out[q] = found
    return out


def _work_melody(work: str) -> tuple[int, frozenset]:
    """(parts, :func:`melody_grams` of the highest part) of a music21 corpus work ``path[#number]``."""
    import music21

    path, _, number = work.partition("#")
    try:
        score = music21.corpus.parse(path, number=int(number) if number else None)
    except Exception:  # noqa: BLE001 - music21 raises many kinds of errors on odd files
        return 0, frozenset()
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    lines = [[int(n.pitches[-1].midi) for n in p.flatten().notes if n.pitches] for p in parts]
    lines = [x for x in lines if x]
    if not lines:
        return 0, frozenset()
    top = max(lines, key=lambda x: sum(x) / len(x))
    return len(lines), melody_grams(top)


def _read_works(corpus: str) -> dict[str, str]:
    """Track id -> music21 work key of a demo corpus (``recordings.jsonl``; {} if it has none)."""
    path = os.path.join(corpus, "recordings.jsonl")
    if not os.path.isfile(path):
        return {}
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if not r.get("error"):
                out[str(r["track_id"])] = str(r.get("source") or "")
    return out


def _read_split(corpus: str) -> list[dict[str, str]]:
    path = os.path.join(corpus, "split.csv")
    if not os.path.isfile(path):
        raise ParameterError(f"{corpus!r} has no split.csv; build it with `msdmatch demo-data {corpus}`")
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_truth(path: str, truth: Mapping[str, set[str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id\n")
        for q in sorted(truth):
            fh.writelines(f"{q},{t}\n" for t in (sorted(truth[q]) or [""]))


def _write_list(path: str, paths: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(p + "\n" for p in paths)


def write_open_set(corpus: str, *, out_dir: str, extra: Sequence[str] = (), split: str = "valid",
                   fraction: float = 0.5, seed: int = 0, halves: int = 2, alike: bool = True) -> dict:
    """Plan the open-set sets of ``split``'s queries of ``corpus`` (see the module docstring).

    Parameters
    ----------
    corpus : str
        A demo corpus directory (``midi/``, ``audio/``, ``split.csv``).
    out_dir : str
        Created if missing; the files listed above are (over)written.
    extra : sequence of str
        More corpora whose previews join the database as distractors, except
        those of songs in the ``test`` split (unless ``split`` is ``test``),
        so that a calibration database holds no test song.
    split : str
        The queries' split.
    fraction : float
        Share of the queries whose recordings ``db-a`` lacks.
    seed : int
    halves : {1, 2}
        2 also writes ``db-b``/``truth-b``, removing the other queries.
    alike : bool
        Count previews of the query's own music (:func:`alike_previews`, read
        from the corpora's ``recordings.jsonl`` with music21) as valid matches.

    Returns
    -------
    summary : dict
        Also written to ``openset.json``.
    """
    if halves not in (1, 2):
        raise ParameterError(f"halves={halves!r} must be 1 or 2")
    os.makedirs(out_dir, exist_ok=True)
    rows = _read_split(corpus)
    audio = {r["track_id"]: os.path.realpath(os.path.join(corpus, "audio", r["track_id"] + ".mp3"))
             for r in rows}
    works = _read_works(corpus) if alike else {}
    for c in extra:
        more = _read_works(c) if alike else {}
        for r in _read_split(c):
            if (split == "test" or r["split"] != "test") and r["track_id"] not in audio:
                audio[r["track_id"]] = os.path.realpath(os.path.join(c, "audio", r["track_id"] + ".mp3"))
                works[r["track_id"]] = more.get(r["track_id"], "")
    q_rows = [r for r in rows if r["query_id"] and r["split"] == split]
    if not q_rows:
        raise ParameterError(f"{corpus}/split.csv has no queries of split {split!r}")
    truth = truth_sets([r["query_id"] for r in q_rows], [r["track_id"] for r in q_rows])
    own = set().union(*truth.values())
    qwork = {r["query_id"]: works.get(r["track_id"], "") for r in q_rows}
    pwork = {t: works.get(t, "") for t in audio if t not in own}
    keys = sorted({w for w in (*qwork.values(), *pwork.values()) if w})
    same = alike_previews(qwork, pwork, {w: _work_melody(w) for w in keys}) if alike else {}
    _write_list(os.path.join(out_dir, "queries.txt"),
                [os.path.realpath(os.path.join(corpus, "midi", q + ".mid")) for q in sorted(truth)])
    _write_list(os.path.join(out_dir, "db-closed.txt"), [audio[t] for t in sorted(audio)])
    _write_truth(os.path.join(out_dir, "truth-closed.csv"), _with_alike(truth, same, set(audio)))
    gone_a = removed_queries(list(truth), fraction=fraction, seed=seed)
    plans = {"a": gone_a}
    if halves == 2:
        plans["b"] = set(truth) - gone_a
    summary: dict = {"corpus": os.path.realpath(corpus), "extra": [os.path.realpath(c) for c in extra],
                     "split": split, "fraction": fraction, "seed": seed, "queries": len(truth),
                     "db_closed": len(audio), "alike": {q: sorted(v) for q, v in sorted(same.items())}}
    for name, gone in plans.items():
        drop = set().union(*(truth[q] for q in gone)) if gone else set()
        _write_list(os.path.join(out_dir, f"db-{name}.txt"), [audio[t] for t in sorted(audio) if t not in drop])
        t_open = _with_alike(open_truth(truth, gone), same, set(audio) - drop)
        _write_truth(os.path.join(out_dir, f"truth-{name}.csv"), t_open)
        summary[f"db_{name}"] = len(audio) - len(drop & set(audio))
        summary[f"no_match_{name}"] = sum(1 for v in t_open.values() if not v)
    with open(os.path.join(out_dir, "openset.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def _with_alike(truth: Mapping[str, set[str]], same: Mapping[str, set[str]], db: set[str]) -> dict[str, set[str]]:
    """``truth`` with each query's alike previews that the database ``db`` holds."""
    return {q: set(t) | (set(same.get(q, ())) & db) for q, t in truth.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m msdmatch.evaluation.openset``: see the module docstring."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m msdmatch.evaluation.openset", description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("extra", nargs="*", help="corpora whose non-test previews join the database")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--halves", type=int, default=2, choices=(1, 2))
    ap.add_argument("--no-alike", dest="alike", action="store_false",
                    help="count previews of a query's own tune in other corpora as distractors")
    a = ap.parse_args(argv)
    try:
        s = write_open_set(a.corpus, out_dir=a.out, extra=a.extra, split=a.split, fraction=a.fraction,
                           seed=a.seed, halves=a.halves, alike=a.alike)
    except ParameterError as e:
        print(f"msdmatch: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(s))


if __name__ == "__main__":  # pragma: no cover
    main()
