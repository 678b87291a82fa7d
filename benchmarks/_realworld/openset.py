"""The open-set step of the real-material set: match once with every true preview, once with half removed.

Issue 24's acceptance asks for the decision rates at the shipped threshold
when most queries have no recording in the database.  Here a seeded half of
the queries (:func:`msdmatch.evaluation.openset.removed_queries`) loses its
true previews: the *half* database is every preview but theirs, and in its
truth those queries have an empty ``track_id`` ("no match exists").  Both
query modalities are matched against the full and the half database, and
``msdmatch report`` scores each run; the two runs of a modality are also
pooled (their query ids prefixed with the run's name) and scored as one.

Files written into ``out_dir`` by :func:`write_plan`::

    truth-all.csv   every query with its valid tracks (the set's truth.csv, grouped)
    truth-half.csv  the same, with one empty track_id row for each removed query
    db-half.txt     the half database's previews, one absolute path a line
    removed.txt     the removed queries, one id a line

The set is for evaluation only: nothing here fits, calibrates or tunes.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

from msdmatch.evaluation.openset import open_truth, removed_queries

#: The runs of a modality: every true preview present, and half of them removed.
RUNS = ("all", "half")
#: Figures of a ``msdmatch report`` decision block that the table shows.
FIGURES = ("false_accept_rate", "true_accept_rate", "auc", "top1_ece")


def write_truth(path: str, truth: Mapping[str, set[str]]) -> None:
    """Write ``query_id,track_id`` rows: one per valid track, one empty row for a query with none."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["query_id", "track_id"])
        for q in sorted(truth):
            w.writerows([q, t] for t in (sorted(truth[q]) or [""]))


def write_plan(truth: Mapping[str, set[str]], previews: Sequence[str], *, out_dir: str, seed: int = 0) -> dict:
    """Choose the removed half and write the half database's list and both truths.

    Parameters
    ----------
    truth : mapping of str to set of str
        Each query's valid track ids (from
        :func:`msdmatch.evaluation.openset.truth_sets`).
    previews : sequence of str
        Paths of every preview of the full database; a track id is its file stem.
    out_dir : str
        Created if missing; the files of the module docstring are (over)written.
    seed : int
        Picks the removed half (a hash of ``(seed, query_id)``, so the order
        of ``truth`` does not matter).

    Returns
    -------
    plan : dict
        ``seed``, ``queries``, ``removed`` (sorted ids), ``db_all`` and
        ``db_half`` (previews in each database).
    """
    os.makedirs(out_dir, exist_ok=True)
    removed = removed_queries(list(truth), fraction=0.5, seed=seed)
    gone = set().union(*(truth[q] for q in removed))
    keep = sorted(os.path.abspath(p) for p in previews if os.path.splitext(os.path.basename(p))[0] not in gone)
    write_truth(os.path.join(out_dir, "truth-all.csv"), truth)
    write_truth(os.path.join(out_dir, "truth-half.csv"), open_truth(truth, removed))
    with open(os.path.join(out_dir, "db-half.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(p + "\n" for p in keep)
    with open(os.path.join(out_dir, "removed.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(q + "\n" for q in sorted(removed))
    return {"seed": seed, "queries": len(truth), "removed": sorted(removed), "db_all": len(previews),
            "db_half": len(keep)}


def pool(tables: Mapping[str, str], out_path: str, *, key: str = "query_id") -> None:
    """Concatenate CSV tables with the same columns, prefixing ``key`` with ``<run>:``.

    Used for MATCHES and truth alike, so that a query matched in two runs
    counts as two queries of the pooled report.

    Parameters
    ----------
    tables : mapping of str to str
        Run name -> CSV path; the first table's header is written.
    out_path : str
        Written through a temporary file and a rename.
    key : str
        The column to prefix.
    """
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        w = None
        for run, path in tables.items():
            with open(path, encoding="utf-8", newline="") as fh:
                r = csv.DictReader(fh)
                if w is None:
                    w = csv.DictWriter(out, fieldnames=list(r.fieldnames or []), lineterminator="\n")
                    w.writeheader()
                for row in r:
                    w.writerow({**row, key: f"{run}:{row[key]}"})
    os.replace(tmp, out_path)


def figures(metrics: Mapping) -> dict:
    """The table's figures from a ``msdmatch report`` metrics.json.

    ``fused``: the top-1 (rank 1) with its ``matched`` flag (the shipped
    threshold); ``thesis``: the thesis's top-1 (lowest verify score) with
    c >= 0.5, from the same MATCHES rows.  Rates with no query to count are None.
    """
    return {"queries": metrics["n_queries"], "no_match": metrics["n_no_match"], "top_1": metrics.get("top_1"),
            "fused": {k: metrics["decision"].get(k) for k in FIGURES},
            "thesis": {k: metrics["thesis_decision"].get(k) for k in FIGURES}}


def table(res: Mapping) -> str:
    """A text table of :func:`figures` per modality and run (``res['figures'][mode][run]``)."""
    def fmt(x):
        return f"{'n/a':>6}" if x is None else f"{x:6.3f}"

    cols = "  ".join(f"{c:>6}" for c in ("FA", "TA", "AUC", "ECE"))
    lines = [f"{'':<22}{'no-match':>9}  fused confidence, `matched`   thesis c >= 0.5",
             f"{'modality / run':<22}{'queries':>9}  {cols}    {cols}"]
    for mode, runs in res["figures"].items():
        for run, f in runs.items():
            row = "  ".join(fmt(f["fused"][k]) for k in FIGURES)
            th = "  ".join(fmt(f["thesis"][k]) for k in FIGURES)
            lines.append(f"{mode + ' / ' + run:<22}{f['no_match']:>4}/{f['queries']:<4}  {row}    {th}")
    return "\n".join(lines)
