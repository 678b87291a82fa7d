"""`msdmatch run` end to end on real components: a `dask scheduler` and 2 `dask worker`
processes on loopback, a real S3 server (moto), every store written to S3; the matches
read back from S3 by another process equal a local run's, and no credential is ever printed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import S3_KEY, S3_SECRET, _free_port

PARTITION = 4  # as in the tiny_stores fixture, so the local and S3 runs batch alike


@pytest.fixture
def dask_processes(s3, tmp_path):
    """A real `dask scheduler` and 2 `dask worker` processes (1 thread each) on 127.0.0.1.

    Workers get S3 credentials only through the AWS environment, as in the cluster manifests.
    """
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               AWS_ENDPOINT_URL=s3["storage_options"]["endpoint_url"])
    bindir = Path(sys.executable).parent
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "worker0", "worker1")}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL,
                              stderr=logs["scheduler"].open("w"), env=env)]
    for i in (0, 1):
        procs.append(subprocess.Popen(
            [str(bindir / "dask"), "worker", addr, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--name", f"w{i}"],
            stdout=subprocess.DEVNULL, stderr=logs[f"worker{i}"].open("w"), env=env))
    from distributed import Client

    try:
        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=90)
            assert all(n == 1 for n in c.nthreads().values())
        yield {"address": addr, "env": env, "logs": logs}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _spec(path: Path, **spec) -> str:
    path.write_text(yaml.safe_dump({"spec_version": 1, "workers": 2, **spec}, sort_keys=False))
    return str(path)


def _msdmatch(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msdmatch.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


READ_BACK = """
import io, json, os, sys
import pyarrow.parquet as pq
import s3fs
fs = s3fs.S3FileSystem()
with fs.open(sys.argv[1], "rb") as f:
    t = pq.read_table(io.BytesIO(f.read()), use_threads=False)
print(json.dumps({c: t.column(c).to_pylist() for c in t.column_names}), flush=True)
os._exit(0)  # pyarrow 26 with s3fs's threads can abort in interpreter shutdown, after the table is out
"""


@pytest.fixture
def local_matches(tiny_stores, copy_store, cluster_client, tmp_path):
    """The same cascade run locally (LocalCluster, local stores) -> MATCHES table."""
    from msdmatch.evaluation.metrics import read_matches
    from msdmatch.stages import embed
    from msdmatch.stages.match import job as match

    q, d = copy_store(tiny_stores["midi-pianoroll"], "q.zarr"), copy_store(tiny_stores["audio"], "d.zarr")
    for url in (q, d):
        embed.run(url, client=cluster_client, partition_size=PARTITION, progress=False)
    out = str(tmp_path / "local.parquet")
    match.run(q, d, out, client=cluster_client, progress=False)
    return read_matches(out)


def test_run_specs_on_dask_processes_write_s3_and_match_local_run(tiny_corpus, s3, dask_processes,
                                                                   local_matches, tmp_path):
    fs, b = s3["fs"], s3["bucket"]
    for sub, pattern in (("midi", "*.mid"), ("audio", "*.mp3")):
        for p in sorted((tiny_corpus / sub).glob(pattern)):
            fs.put(str(p), f"{b}/in/{sub}/{p.name}")
    base = f"s3://{b}"
    so = {"client_kwargs": {"region_name": "us-east-1"}}  # credentials only in the environment
    common = {"expected_items": 6, "storage_options": so}
    specs = [
        _spec(tmp_path / "fa.yaml", name="featurize-db", stage="featurize", **common,
              args={"src": f"{base}/in/audio", "out": f"{base}/stores/db.zarr", "kind": "audio",
                    "partition_size": PARTITION}),
        _spec(tmp_path / "fm.yaml", name="featurize-queries", stage="featurize", **common,
              args={"src": f"{base}/in/midi", "out": f"{base}/stores/q.zarr", "kind": "midi",
                    "mode": "pianoroll", "partition_size": PARTITION}),
        _spec(tmp_path / "ed.yaml", name="embed-db", stage="embed", **common,
              args={"store": f"{base}/stores/db.zarr", "partition_size": PARTITION}),
        _spec(tmp_path / "eq.yaml", name="embed-queries", stage="embed", **common,
              args={"store": f"{base}/stores/q.zarr", "partition_size": PARTITION}),
        _spec(tmp_path / "m.yaml", name="match", stage="match", **common,
              args={"queries": f"{base}/stores/q.zarr", "db": f"{base}/stores/db.zarr",
                    "out": f"{base}/results/matches.parquet", "db_items": 6}),
    ]
    env = dict(os.environ, AWS_ENDPOINT_URL=s3["storage_options"]["endpoint_url"])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    printed = []
    for spec in specs:
        t0 = time.perf_counter()
        r = _msdmatch("run", spec, "--scheduler", dask_processes["address"], env=env)
        printed.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr
        assert f"dask: scheduler {dask_processes['address']}" in r.stderr  # the dashboard line
        assert time.perf_counter() - t0 < 600
    assert "featurized 6 items" in printed[0] and "featurized 6 items" in printed[1]
    assert "embedded 6 items" in printed[2] and "matched 6 queries against 6 previews" in printed[4]
    # every store is on S3, and nothing was written locally
    for key in ("stores/db.zarr/zarr.json", "stores/q.zarr/zarr.json", "stores/db.zarr/features/zarr.json",
                "stores/q.zarr/pse", "stores/db.zarr/dhs", "results/matches.parquet"):
        assert fs.exists(f"{b}/{key}"), key
    assert not fs.exists(f"{b}/stores/db.zarr/_parts/featurize")
    # another process reads the matches back from S3, credentials from its environment only
    r = subprocess.run([sys.executable, "-c", READ_BACK, f"s3://{b}/results/matches.parquet"],
                       capture_output=True, text=True, env=env, timeout=120, check=True)
    remote = json.loads(r.stdout)
    assert remote["query_id"] == local_matches["query_id"].tolist()
    assert remote["track_id"] == local_matches["track_id"].tolist()
    assert remote["rank"] == local_matches["rank"].tolist()
    for col in ("confidence", "verify_score", "dhs_score", "pse_distance"):
        np.testing.assert_allclose(np.array(remote[col], float), local_matches[col].astype(float),
                                   rtol=1e-6, atol=0, err_msg=col)
    # no credential in anything printed, nor in the scheduler's and workers' logs
    logs = "".join(p.read_text() for p in dask_processes["logs"].values())
    for text in printed + [logs]:
        assert S3_KEY not in text and S3_SECRET not in text


def test_failing_run_masks_credentials_given_in_the_spec(s3, tmp_path):
    """A stage failure with credentials in storage_options: one line, exit 1, secrets masked."""
    so = dict(s3["storage_options"])
    spec = _spec(tmp_path / "bad.yaml", name="embed-missing", stage="embed", storage_options=so,
                 args={"store": f"s3://{s3['bucket']}/no-such-store.zarr"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    r = _msdmatch("run", spec, "--quiet", env=env, timeout=300)
    assert r.returncode in (1, 2), r.stderr
    err = r.stderr.strip()
    assert err.startswith("msdmatch: error: embed-missing:") and len(err.splitlines()) == 1, err
    assert S3_KEY not in r.stdout + r.stderr and S3_SECRET not in r.stdout + r.stderr
    r = _msdmatch("run", spec, "--dry-run", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "secret': '***'" in r.stdout and "key': '***'" in r.stdout
    assert S3_KEY not in r.stdout + r.stderr and S3_SECRET not in r.stdout + r.stderr
