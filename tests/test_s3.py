"""Stores on a real S3 protocol server (moto server mode on loopback)."""
import json
import os
import subprocess
import sys

import numpy as np

from msdmatch.io.store import Store
from msdmatch.stages import featurize as stage


def test_featurize_to_s3_and_read_back_in_another_process(tiny_corpus, s3, cluster_client):
    url = f"s3://{s3['bucket']}/db.zarr"
    so = s3["storage_options"]
    s = stage.run(str(tiny_corpus / "audio"), url, client=cluster_client, kind="audio",
                  partition_size=2, storage_options=so, progress=False)
    assert s.items == 6
    code = (
        "import json, sys, numpy as np\n"
        "from msdmatch.io.store import Store\n"
        f"s = Store({url!r}, storage_options=json.loads(sys.argv[1]))\n"
        "print(json.dumps({'ids': s.ids, 'offsets': s.offsets.tolist(),"
        " 'sum': float(np.asarray(s.group['features'][:], dtype=np.float64).sum())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(so)], capture_output=True,
                         text=True, check=True, timeout=120)
    remote = json.loads(out.stdout)
    local = Store(url, storage_options=so)
    assert remote["ids"] == local.ids == sorted(p.stem for p in (tiny_corpus / "audio").glob("*.mp3"))
    assert remote["offsets"] == local.offsets.tolist()
    assert np.isclose(remote["sum"], np.asarray(local.group["features"][:], np.float64).sum())
    # staging parts are gone once the store is consolidated
    assert not s3["fs"].exists(f"{s3['bucket']}/db.zarr/_parts/featurize")


def test_cli_featurize_from_s3_prefix_with_env_credentials(tiny_corpus, s3, tmp_path):
    fs, b = s3["fs"], s3["bucket"]
    for p in sorted((tiny_corpus / "midi").glob("*.mid"))[:3]:
        fs.put(str(p), f"{b}/midi/{p.name}")
    env = dict(os.environ, AWS_ENDPOINT_URL=s3["storage_options"]["endpoint_url"])
    r = subprocess.run(
        [sys.executable, "-m", "msdmatch.cli", "featurize", "midi", f"s3://{b}/midi",
         "--out", f"s3://{b}/q.zarr", "--mode", "pianoroll", "--workers", "1", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "featurized 3 items" in r.stdout
    q = Store(f"s3://{b}/q.zarr", storage_options=s3["storage_options"])
    assert q.ids == ["song0", "song1", "song2"] and q.modality == "midi-pianoroll"
    assert all(src.startswith(f"s3://{b}/midi/") for src in q.sources)
    assert s3["storage_options"]["secret"] not in r.stdout + r.stderr
