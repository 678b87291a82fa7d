"""An accuracy floor in CI: the real cascade, with the shipped models, on a small generated corpus.

The corpus is the demo generator's (music21 works and generated songs, rendered
with other soundfonts and effects than the queries), with a seed the shipped
models were not trained on.  The prune keeps 30% of the database and only the
10 best DHS scores reach the screen and verify, so each learned stage must do
its job: with random DHS or PSE weights the true preview is pruned or reranked
away for most queries and the floor fails.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

#: top-1 the cascade must reach.  Measured: 0.958 (23 of 24) with the shipped models; 0.375 with the
#: shipped DHS nets' weights replaced by random ones (see docs/experiments.md).
TOP1_FLOOR = 0.75


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "msdmatch.cli", *args, "--quiet"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def floor_corpus(tmp_path_factory):
    from msdmatch.demo import build_corpus

    root = tmp_path_factory.mktemp("floor")
    build_corpus(root / "corpus", songs=24, distractors=56, seed=101, duplicates=0.0, n_workers=2, progress=False)
    return root


def top1(root) -> float:
    """Top-1 of the whole cascade, run through the CLI, with the shipped models."""
    db, q, out = root / "db.zarr", root / "q.zarr", root / "matches.csv"
    _cli("featurize", "audio", str(root / "corpus" / "audio"), "--out", str(db))
    _cli("featurize", "midi", str(root / "corpus" / "midi"), "--out", str(q))
    _cli("embed", str(db))
    _cli("embed", str(q))
    _cli("match", str(q), str(db), "--out", str(out), "--prune-k", "24", "--rerank", "10", "--verify", "10")
    with open(root / "corpus" / "truth.csv", newline="") as f:
        truth = {r["query_id"]: r["track_id"] for r in csv.DictReader(f) if r["track_id"]}
    with open(out, newline="") as f:
        first = {r["query_id"]: r["track_id"] for r in csv.DictReader(f) if r["rank"] == "1"}
    return sum(first.get(qid) == tid for qid, tid in truth.items()) / len(truth)


def test_cascade_top1_floor_with_the_shipped_models(floor_corpus):
    assert top1(floor_corpus) >= TOP1_FLOOR
