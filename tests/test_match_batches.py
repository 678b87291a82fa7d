"""The match job in query batches: commits, re-runs, output forms, --out checks, `matched`, failures."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from msdmatch.errors import ParameterError
from msdmatch.io.matches_table import META, read_failures, read_matches
from msdmatch.stages import embed
from msdmatch.stages.match import job as match
from msdmatch.stages.match import verify
from msdmatch.stages.match.plan import QueryBatch, plan_batches

CLI = [sys.executable, "-m", "msdmatch.cli"]


@pytest.fixture(scope="module")
def embedded(tiny_stores, cluster_client, tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded-batches")
    out = {}
    for name in ("audio", "midi-synth"):
        dst = root / f"{name}.zarr"
        shutil.copytree(tiny_stores[name], dst)
        embed.run(str(dst), client=cluster_client, partition_size=4, progress=False)
        out[name] = str(dst)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for c in a:
        if np.asarray(a[c]).dtype.kind == "f":
            np.testing.assert_array_equal(a[c], b[c], err_msg=c)
        else:
            assert np.asarray(a[c]).tolist() == np.asarray(b[c]).tolist(), c


# ------------------------------------------------------------------ the plan


def test_plan_batches_fills_the_gaps_left_by_committed_ranges():
    assert plan_batches(7, batch_size=3) == [QueryBatch(0, 3), QueryBatch(3, 6), QueryBatch(6, 7)]
    assert plan_batches(7, batch_size=3, done=[(3, 6)]) == [QueryBatch(0, 3), QueryBatch(6, 7)]
    assert plan_batches(10, batch_size=4, done=[(0, 4), (4, 8)]) == [QueryBatch(8, 10)]  # queries appended
    assert plan_batches(0, batch_size=4) == []
    with pytest.raises(ParameterError, match="--batch-size"):
        plan_batches(3, batch_size=0)


# ------------------------------------------------------------------ batches


def test_batch_size_and_shards_do_not_change_the_table(embedded, cluster_client):
    kw = dict(client=cluster_client, rerank=4, verify=3, keep="all", progress=False)
    one = match.run(embedded["midi-synth"], embedded["audio"], batch_size=1, n_shards=3, **kw)
    big = match.run(embedded["midi-synth"], embedded["audio"], batch_size=1000, n_shards=1, **kw)
    assert one["batches_run"] == 6 and big["batches_run"] == 1
    assert len(one["table"]["query_id"]) == 6 * 6
    assert_same(one["table"], big["table"])


def test_batches_commit_and_a_rerun_skips_them(embedded, cluster_client, tmp_path):
    out = tmp_path / "matches"
    kw = dict(client=cluster_client, rerank=3, verify=2, batch_size=2, progress=False)
    s = match.run(embedded["midi-synth"], embedded["audio"], str(out), **kw)
    assert (s["batches_run"], s["batches_skipped"]) == (3, 0)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-0000000000-0000000002.parquet", "part-0000000002-0000000004.parquet",
                     "part-0000000004-0000000006.parquet"]
    meta = json.loads((out / META).read_text())
    assert meta["complete"] and meta["batch_size"] == 2 and meta["run"]["db"]["n"] == 6
    full = read_matches(str(out))
    # a re-run of a complete output computes nothing
    s = match.run(embedded["midi-synth"], embedded["audio"], str(out), **kw)
    assert (s["batches_run"], s["batches_skipped"]) == (0, 3)
    # a lost part is recomputed alone, with the batch size the output was planned with
    (out / parts[1]).unlink()
    s = match.run(embedded["midi-synth"], embedded["audio"], str(out), **{**kw, "batch_size": 5})
    assert (s["batches_run"], s["batches_skipped"], s["queries_run"]) == (1, 2, 2)
    assert_same(full, read_matches(str(out)))


def test_output_forms_are_read_by_pandas_pyarrow_dask_and_report(embedded, cluster_client, tmp_path):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow.parquet as pq

    kw = dict(client=cluster_client, rerank=3, verify=2, batch_size=4, progress=False)
    ref = match.run(embedded["midi-synth"], embedded["audio"], **kw)["table"]
    for name in ("ds", "m.parquet", "m.csv", "m.zarr"):
        out = str(tmp_path / name)
        s = match.run(embedded["midi-synth"], embedded["audio"], out, **kw)
        assert s["batches_run"] == 2 and s["failures"] == 0
        assert not Path(out + ".msdmatch-parts").exists()  # staging removed once the file is whole
        got = read_matches(out)
        assert_same({c: ref[c] for c in got}, got)
        assert list(got) == list(ref)
        assert read_failures(out)["query_id"].size == 0
    ds = str(tmp_path / "ds")
    frames = [pd.read_parquet(ds), pq.read_table(ds).to_pandas(), dd.read_parquet(ds).compute()]
    for df in frames:
        assert df["query_id"].tolist() == ref["query_id"].tolist()
        np.testing.assert_array_equal(df["confidence"].to_numpy(), ref["confidence"])
        assert df["matched"].dtype == bool
    truth = tmp_path / "truth.csv"
    truth.write_text("query_id,track_id\n" + "".join(f"song{k},TRTINY{k:012d}\n" for k in range(6)))
    for name in ("ds", "m.zarr"):
        r = subprocess.run(CLI + ["report", str(tmp_path / name), "--truth", str(truth)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "| MRR |" in r.stdout


def test_outputs_on_s3(embedded, s3, cluster_client):
    so, b = s3["storage_options"], s3["bucket"]
    kw = dict(client=cluster_client, rerank=3, verify=2, batch_size=4, storage_options=so, progress=False)
    ref = match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client, rerank=3, verify=2,
                    progress=False)["table"]
    for url in (f"s3://{b}/res/ds", f"s3://{b}/res/m.parquet"):
        s = match.run(embedded["midi-synth"], embedded["audio"], url, **kw)
        assert s["batches_run"] == 2
        got = read_matches(url, storage_options=so)
        assert_same({c: ref[c] for c in got}, got)
        s = match.run(embedded["midi-synth"], embedded["audio"], url, **kw)  # complete: nothing to do
        assert s["batches_run"] == 0
    assert s3["fs"].exists(f"{b}/res/ds/{META}")
    assert not s3["fs"].exists(f"{b}/res/m.parquet.msdmatch-parts")


# ------------------------------------------------------------------ --out checks


def _cli_match(embedded, out, *extra) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(CLI + ["match", embedded["midi-synth"], embedded["audio"], "--out", str(out), "--rerank",
                              "3", "--verify", "2", "--workers", "1", *extra],
                       capture_output=True, text=True, timeout=300)
    return r, time.perf_counter() - t0


def _refused(r: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), r.stderr
    assert "dask:" not in r.stderr  # no cluster was started


@pytest.mark.safety
def test_bad_out_is_refused_fast_before_the_cluster_starts(embedded, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    (tmp_path / "theirs.parquet").write_bytes(b"not a parquet file")
    for out, pattern in ((tmp_path / "m.txt", r"expected a \.csv or \.parquet file.*not '\.txt'"),
                         (tmp_path / "nodir" / "m.parquet", r"does not exist; create it first"),
                         (foreign, r"holds other files \(notes\.txt\) and was not made by msdmatch"),
                         (tmp_path / "theirs.parquet", r"exists and was not written by msdmatch")):
        r, dt = _cli_match(embedded, out)
        _refused(r, pattern)
        assert dt < 5, f"{out}: refused after {dt:.1f} s"
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(os.listdir(foreign)) == ["notes.txt"]
    assert (tmp_path / "theirs.parquet").read_bytes() == b"not a parquet file"
    assert not (tmp_path / "theirs.parquet.msdmatch-parts").exists()


@pytest.mark.safety
@pytest.mark.slow  # three CLI runs, each with its own LocalCluster
def test_matches_of_another_run_need_overwrite(embedded, tmp_path):
    out = tmp_path / "ds"
    r, _ = _cli_match(embedded, out, "--quiet", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "2 batches run, 0 already done" in r.stdout
    r, _ = _cli_match(embedded, out, "--threshold", "0.9")
    _refused(r, r"holds matches made with other parameters.*threshold.*--overwrite.*new --out")
    r, _ = _cli_match(embedded, out, "--threshold", "0.9", "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / META).read_text())["run"]["params"]["threshold"] == 0.9


# ------------------------------------------------------------------ matched, thesis confidence, spans


def _check_decisions(t: dict, threshold: float) -> None:
    from msdmatch.kernels.dtw import dtw_confidence

    top = t["rank"] == 1
    np.testing.assert_array_equal(t["matched"], top & (t["confidence"] >= threshold))
    ver = t["stage"] == "verify"
    np.testing.assert_array_equal(t["thesis_confidence"][ver], dtw_confidence(t["verify_score"][ver]))
    assert np.isnan(t["thesis_confidence"][~ver]).all()


def test_matched_threshold_and_thesis_confidence_from_the_api(embedded, cluster_client, tmp_path):
    from msdmatch.io.modelfile import shipped_model_dir

    kw = dict(client=cluster_client, rerank=4, verify=3, progress=False)
    s = match.run(embedded["midi-synth"], embedded["audio"], **kw)
    t = s["table"]
    _check_decisions(t, s["threshold"])
    conf = t["confidence"][t["rank"] == 1]
    assert 0 < conf.min() and conf.max() < 1
    for thr in (0.0, float(np.median(conf)), 1.0):
        s = match.run(embedded["midi-synth"], embedded["audio"], threshold=thr, **kw)
        assert s["threshold"] == thr
        _check_decisions(s["table"], thr)
    assert match.run(embedded["midi-synth"], embedded["audio"], threshold=0.0, **kw)["table"]["matched"].sum() == 6
    # the threshold the fusion JSON ships
    doc = json.loads((shipped_model_dir() / "fusion-midi-synth.json").read_text())
    fusion = tmp_path / "fusion.json"
    fusion.write_text(json.dumps({**doc, "threshold": float(np.median(conf))}))
    s = match.run(embedded["midi-synth"], embedded["audio"], fusion=str(fusion), **kw)
    assert s["threshold"] == float(np.median(conf))
    _check_decisions(s["table"], s["threshold"])
    with pytest.raises(ParameterError, match="--threshold must be in"):
        match.run(embedded["midi-synth"], embedded["audio"], threshold=1.5, **kw)


def test_matched_threshold_from_the_cli(embedded, tmp_path):
    out = tmp_path / "m.parquet"
    r, _ = _cli_match(embedded, out, "--threshold", "0.25", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "matched = confidence >= 0.25" in r.stdout
    _check_decisions(read_matches(str(out)), 0.25)


def test_query_span_of_the_rows_that_can_rank_first(embedded, cluster_client):
    from msdmatch.io.store import Store
    from msdmatch.stages.match.verify import VERIFY_COLUMNS

    t = match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client, rerank=4, verify=3,
                  progress=False)["table"]
    Q = Store(embedded["midi-synth"])
    for k, q in enumerate(Q.ids):
        sel = np.flatnonzero(t["query_id"] == q)
        has = sel[np.isfinite(t["query_start"][sel])]
        ver = sel[t["stage"][sel] == "verify"]
        # the best verified row by each verify score carries the span, the rank-1 row among them
        best = {int(ver[np.argmin(t[c][ver])]) for c in VERIFY_COLUMNS}
        assert set(has.tolist()) == best and int(sel[t["rank"][sel] == 1][0]) in best
        seconds = (Q.offsets[k + 1] - Q.offsets[k]) * Q.params.frame_seconds
        for r in has:
            assert 0 <= t["query_start"][r] < t["query_end"][r] <= seconds + 1e-9
        # the tiny corpus's previews cover their whole song
        r = int(sel[t["rank"][sel] == 1][0])
        assert t["query_end"][r] - t["query_start"][r] > 0.5 * seconds


def test_query_span_is_the_path_of_the_bin_standardised_dtw():
    from msdmatch.kernels.dtw import cosine_dtw
    from msdmatch.kernels.features import standardize_bins

    rng = np.random.default_rng(0)
    X = rng.gamma(0.5, size=(400, 84)).astype(np.float32)
    # the candidate: query frames 120..269 under a steep static equalisation (an offset per bin), plus noise
    Y = X[120:270] + np.linspace(-3, 3, 84, dtype=np.float32) + rng.normal(0, 0.05, (150, 84)).astype(np.float32)
    fs = 0.05
    _, path = cosine_dtw(standardize_bins(X), standardize_bins(Y), gully=verify.VERIFY_GULLY)
    span = verify.query_span(X, Y, frame_seconds=fs)
    assert span == (path[0, 0] * fs, (path[-1, 0] + 1) * fs)
    assert span == pytest.approx((120 * fs, 270 * fs), abs=1.5 * fs)
    assert np.isnan(verify.query_span(X[:0], Y, frame_seconds=fs)).all()
    assert np.isnan(verify.query_span(X, Y[:0], frame_seconds=fs)).all()


# ------------------------------------------------------------------ failures


def test_queries_that_cannot_be_matched_go_to_the_failures_table(embedded, cluster_client, copy_store, tmp_path):
    import zarr

    q = copy_store(embedded["midi-synth"], "q.zarr")
    g = zarr.open_group(q, mode="r+")
    E = g["pse/pse-midi-synth"][:]
    E[1] = np.nan
    g["pse/pse-midi-synth"][:] = E
    off = g["dhs/dhs-midi-synth/offsets"][:]
    off[-1] = off[-2]  # the last query's hash sequence is empty
    g["dhs/dhs-midi-synth/offsets"][:] = off
    out = str(tmp_path / "ds")
    s = match.run(q, embedded["audio"], out, client=cluster_client, rerank=3, verify=2, batch_size=4,
                  progress=False)
    assert s["failures"] == 2 and s["batches_run"] == 2
    t, f = read_matches(out), read_failures(out)
    assert sorted(set(t["query_id"].tolist())) == ["song0", "song2", "song3", "song4"]
    assert f["query_id"].tolist() == ["song1", "song5"]
    assert f["stage"].tolist() == ["embed", "embed"]
    assert "no finite PSE embedding" in f["reason"][0] and "empty hash sequence" in f["reason"][1]
    for c in ("dhs_score", *verify.VERIFY_COLUMNS):
        assert np.all(np.isfinite(t[c][t["stage"] == "verify"])), c


def test_a_changed_db_is_refused_and_overwrite_replaces(embedded, cluster_client, copy_store, tmp_path):
    import zarr

    out = str(tmp_path / "ds")
    kw = dict(client=cluster_client, rerank=3, verify=2, batch_size=4, progress=False)
    match.run(embedded["midi-synth"], embedded["audio"], out, **kw)
    db = copy_store(embedded["audio"], "db2.zarr")
    zarr.open_group(db, mode="r+")["ids"][0] = "TRRENAMED000000"
    with pytest.raises(ParameterError, match=r"the DB changed since.*--overwrite"):
        match.run(embedded["midi-synth"], db, out, **kw)
    assert json.loads((Path(out) / META).read_text())["complete"]  # untouched
    s = match.run(embedded["midi-synth"], db, out, overwrite=True, **kw)
    assert s["batches_run"] == 2 and "TRRENAMED000000" in read_matches(out)["track_id"].tolist()
