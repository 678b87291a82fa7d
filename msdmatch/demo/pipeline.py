"""``msdmatch demo``: build the demo corpus and run the whole cascade on it.

Stages, each resumable, on one LocalCluster (or the given scheduler):
demo-data -> featurize audio and MIDI -> embed both -> match -> report on
the test split.  Ends with the rank table and the time per query.
"""
from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path


def _test_truth(corpus: Path, out: Path) -> Path:
    with open(corpus / "split.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["query_id"] and r["split"] == "test"]
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id\n")
        fh.writelines(f"{r['query_id']},{r['track_id']}\n" for r in rows)
    return out


def run_demo(out_dir: str, *, songs: int = 200, distractors: int = 800, seed: int = 0,
             mode: str = "synth", brute_force: int = 10, scheduler: str | None = None,
             n_workers: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Run the demo end to end; returns the report metrics plus timings."""
    from msdmatch.demo import build_corpus
    from msdmatch.executor import client_for
    from msdmatch.io.outputs import check_out_dir, mark_out_dir
    from msdmatch.stages import embed, featurize
    from msdmatch.stages.match import job as match
    from msdmatch.stages.report import run_report

    check_out_dir(str(out_dir), kind="demo")  # a foreign folder is refused before any work
    mark_out_dir(str(out_dir), kind="demo")
    out = Path(out_dir)
    corpus = out / "corpus"
    t: dict[str, float] = {}
    with client_for(scheduler, n_workers=n_workers) as client:
        t0 = time.perf_counter()
        meta = corpus / "corpus.json"
        want = {"songs": songs, "distractors": distractors}
        if not (meta.is_file() and json.loads(meta.read_text()).get("requested") == want
                and json.loads(meta.read_text()).get("seed") == seed):
            say(f"[1/5] demo-data: {songs} songs with MIDI, {distractors} distractor previews")
            build_corpus(corpus, songs=songs, distractors=distractors, seed=seed,
                         n_workers=len(client.nthreads()))
        t["demo-data"] = time.perf_counter() - t0
        db, q = str(out / "db.zarr"), str(out / f"queries-{mode}.zarr")
        say("[2/5] featurize audio previews and MIDI queries")
        t0 = time.perf_counter()
        s1 = featurize.run(str(corpus / "audio"), db, client=client, kind="audio")
        s2 = featurize.run(str(corpus / "midi"), q, client=client, kind="midi", mode=mode)
        say(s1.line())
        say(s2.line())
        t["featurize"] = time.perf_counter() - t0
        say("[3/5] embed with the shipped PSE and DHS models")
        t0 = time.perf_counter()
        embed.run(db, client=client)
        embed.run(q, client=client)
        t["embed"] = time.perf_counter() - t0
        say("[4/5] match: PSE prune -> DHS rerank -> screen -> DTW verify -> fusion")
        t0 = time.perf_counter()
        m = match.run(q, db, str(out / "matches.parquet"), client=client, keep="all")
        t["match"] = time.perf_counter() - t0
        say("[5/5] report on the test split")
        t0 = time.perf_counter()
        truth = _test_truth(corpus, out / "truth_test.csv")
        metrics = run_report(str(out / "matches.parquet"), str(truth), out_dir=str(out / "report"),
                             queries=q, db=db, brute_force=brute_force, client=client)
        t["report"] = time.perf_counter() - t0
    metrics["match_per_query_seconds"] = m["per_query"]
    metrics["match_threads"] = m["threads"]
    metrics["stage_seconds"] = t
    from msdmatch.evaluation.metrics import json_safe

    (out / "report" / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False))
    return metrics
