"""Match stage, report and align on real components."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_midi

from msdmatch.errors import ParameterError
from msdmatch.evaluation.metrics import read_matches, write_matches
from msdmatch.stages import embed
from msdmatch.stages.match import job as match
from msdmatch.stages.match import verify

COLUMNS = ["query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score", "pse_distance"]


@pytest.fixture(scope="module")
def embedded(tiny_stores, cluster_client, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("embedded")
    out = {}
    for name in ("audio", "midi-synth"):
        dst = root / f"{name}.zarr"
        shutil.copytree(tiny_stores[name], dst)
        embed.run(str(dst), client=cluster_client, partition_size=4, progress=False)
        out[name] = str(dst)
    return out


def _table(s):
    return {k: v for k, v in s["table"].items()}


def test_sharded_equals_single_process(embedded, cluster_client):
    kw = dict(client=cluster_client, rerank=4, verify=2, keep="all", progress=False)
    one = _table(match.run(embedded["midi-synth"], embedded["audio"], n_shards=1, **kw))
    three = _table(match.run(embedded["midi-synth"], embedded["audio"], n_shards=3, **kw))
    assert set(COLUMNS) <= set(one)
    for c in one:
        if one[c].dtype.kind == "f":
            np.testing.assert_array_equal(one[c], three[c])
        else:
            assert one[c].tolist() == three[c].tolist()
    # every query gets every db item once (keep='all', K = db size), ranks 1..6
    for q in np.unique(one["query_id"]):
        sel = one["query_id"] == q
        assert sorted(one["rank"][sel].tolist()) == list(range(1, 7))
        assert len(set(one["track_id"][sel].tolist())) == 6
        v = one["stage"][sel]
        assert (v == "verify").sum() == 2 and (v == "rerank").sum() == 2 and (v == "prune").sum() == 2


def test_verify_and_screen_scores_are_cosine_dtws_of_their_views(embedded, cluster_client):
    from msdmatch.io.modelfile import load_model, run_net
    from msdmatch.io.store import Store
    from msdmatch.kernels.dtw import cosine_dtw
    from msdmatch.kernels.features import standardize_bins, unit_frames
    from msdmatch.kernels.screen import screen_frames, unpack

    t = _table(match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client, rerank=6,
                         verify=6, progress=False))
    Q, D = Store(embedded["midi-synth"]), Store(embedded["audio"])
    nets = verify.dhs_nets(Q, D, load_model("dhs-midi-synth"))

    def outputs(x, onnx):  # one unbatched sequence through onnxruntime, cut to its own steps
        y = run_net(onnx, x[None].astype(np.float32), np.ones((1, len(x)), np.float32))[0]
        return unit_frames(y[: -(-len(x) // nets["downsample"])])

    qrow, drow = {q: i for i, q in enumerate(Q.ids)}, {d: i for i, d in enumerate(D.ids)}
    for k in (0, 7, 20):
        q, d = t["query_id"][k], t["track_id"][k]
        want = cosine_dtw(outputs(Q.sequence(qrow[q]), nets["query"]), outputs(D.sequence(drow[d]), nets["db"]),
                          gully=verify.VERIFY_GULLY, return_path=False)
        assert t["verify_dhs_score"][k] == pytest.approx(want, abs=1e-5)
        top = [standardize_bins(s.sequence(r)[:, 36:]) for s, r in ((Q, qrow[q]), (D, drow[d]))]  # C5-B5
        want = cosine_dtw(*top, gully=verify.VERIFY_GULLY, return_path=False)
        assert t["verify_high_score"][k] == pytest.approx(want, abs=1e-6)
        want = cosine_dtw(*[unpack(screen_frames(s.sequence(r))) for s, r in ((Q, qrow[q]), (D, drow[d]))],
                          gully=0.96, return_path=False)
        assert t["screen_score"][k] == pytest.approx(want, abs=1e-9)
    # on the tiny corpus each MIDI file's own recording scores best
    for k in range(6):
        sel = t["query_id"] == f"song{k}"
        assert t["track_id"][sel][np.argmin(t["verify_dhs_score"][sel])] == f"TRTINY{k:012d}"


def test_cli_match_and_report(embedded, tmp_path):
    out = tmp_path / "m.csv"
    r = subprocess.run([sys.executable, "-m", "msdmatch.cli", "match", embedded["midi-synth"],
                        embedded["audio"], "--out", str(out), "--workers", "1", "--rerank", "3",
                        "--verify", "3", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "matched 6 queries against 6 previews" in r.stdout
    t = read_matches(str(out))
    assert list(t)[:7] == COLUMNS and len(t["rank"]) == 18
    conf = t["confidence"][t["rank"] == 1]
    assert np.all((conf >= 0) & (conf <= 1))
    truth = tmp_path / "truth.csv"
    truth.write_text("query_id,track_id\n" + "".join(f"song{k},TRTINY{k:012d}\n" for k in range(6)))
    r = subprocess.run([sys.executable, "-m", "msdmatch.cli", "report", str(out), "--truth", str(truth),
                        "--out", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| MRR |" in r.stdout
    for f in ("metrics.json", "rank_table.txt", "rank_cdf.png", "distances.png", "reliability.png"):
        assert (tmp_path / "rep" / f).is_file(), f
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    # from the stage column
    assert all(0 <= metrics[f"recall_{s}"] <= 1 for s in ("dhs", "screen", "final"))


def test_match_refuses_swapped_and_unembedded(embedded, tiny_stores, cluster_client):
    with pytest.raises(ParameterError, match="swapped"):
        match.run(embedded["audio"], embedded["audio"], client=cluster_client, progress=False)
    with pytest.raises(ParameterError, match="run `msdmatch embed"):
        match.run(tiny_stores["midi-synth"], embedded["audio"], client=cluster_client, progress=False)


def test_match_refuses_a_store_embedded_before_the_screen(embedded, copy_store, cluster_client):
    import shutil

    old = copy_store(embedded["audio"])
    shutil.rmtree(f"{old}/screen")
    with pytest.raises(ParameterError, match=r"no screen frames .* re-run `msdmatch embed"):
        match.run(embedded["midi-synth"], old, client=cluster_client, progress=False)


def test_match_refuses_a_db_without_its_hub_scores(embedded, copy_store, cluster_client):
    import shutil

    old = copy_store(embedded["audio"])
    shutil.rmtree(f"{old}/hub/dhs-midi-synth")
    with pytest.raises(ParameterError, match=r"no complete 'hub/dhs-midi-synth' .* run `msdmatch embed"):
        match.run(embedded["midi-synth"], old, client=cluster_client, progress=False)


def test_match_refuses_stores_embedded_by_another_version_of_the_models(embedded, copy_store, cluster_client,
                                                                       tmp_path):
    import shutil

    from msdmatch.errors import ModelError
    from msdmatch.io.modelfile import shipped_model_dir

    other = tmp_path / "retrained"
    shutil.copytree(shipped_model_dir(), other)
    mj = other / "pse-midi-synth" / "model.json"
    mj.write_text(json.dumps({**json.loads(mj.read_text()), "note": "retrained"}))
    db = copy_store(embedded["audio"], "db-retrained.zarr")
    embed.run(db, models=[str(other)], client=cluster_client, partition_size=4, progress=False)
    with pytest.raises(ModelError, match=r"DB store .* pse/pse-midi-synth embedded by another version"):
        match.run(embedded["midi-synth"], db, client=cluster_client, progress=False)
    with pytest.raises(ModelError, match=r"QUERIES store .* re-run `msdmatch embed"):
        match.run(embedded["midi-synth"], db, models=str(other), client=cluster_client, progress=False)
    q = copy_store(embedded["midi-synth"], "q-retrained.zarr")
    embed.run(q, models=[str(other)], client=cluster_client, partition_size=4, progress=False)
    s = match.run(q, db, models=str(other), client=cluster_client, progress=False)  # one version: matched
    assert len(s["table"]["query_id"]) > 0
    # a store embedded before arrays recorded their digest: read from the store's embed key
    import zarr

    g = zarr.open_group(db, mode="r+")
    digest = g["pse/pse-midi-synth"].attrs["model_digest"]
    attrs = dict(g["pse/pse-midi-synth"].attrs)
    del attrs["model_digest"]
    g["pse/pse-midi-synth"].attrs.put(attrs)
    assert "model_digest" not in g["pse/pse-midi-synth"].attrs
    assert embed.embedded_digest(g, "pse/pse-midi-synth") == digest


def test_db_on_s3(embedded, s3, cluster_client, tmp_path):
    import shutil

    fs, b = s3["fs"], s3["bucket"]
    fs.put(embedded["audio"], f"{b}/db.zarr", recursive=True)
    local = _table(match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client,
                             rerank=3, verify=2, progress=False))
    so = s3["storage_options"]
    s = match.run(embedded["midi-synth"], f"s3://{b}/db.zarr", f"s3://{b}/out/m.zarr", client=cluster_client,
                  rerank=3, verify=2, storage_options=so, progress=False)
    assert "table" not in s and s["batches_run"] == 1
    remote = read_matches(f"s3://{b}/out/m.zarr", storage_options=so)
    assert local["track_id"].tolist() == remote["track_id"].tolist()
    np.testing.assert_array_equal(local["confidence"], remote["confidence"])
    # MATCHES on S3, as a Zarr group and as Parquet/CSV files, read back the same
    write_matches(remote, f"s3://{b}/out/m.parquet", storage_options=so)
    write_matches(remote, f"s3://{b}/out/m.csv", storage_options=so)
    for name in ("m.zarr", "m.parquet", "m.csv"):
        back = read_matches(f"s3://{b}/out/{name}", storage_options=so)
        assert list(back) == COLUMNS + ["dhs_matrix_mean", "dhs_hub", "verify_std_score", "verify_dhs_score",
                                        "verify_high_score", "screen_score", "stage", "thesis_confidence",
                                        "matched", "query_start", "query_end"], name
        assert back["track_id"].tolist() == remote["track_id"].tolist(), name
        np.testing.assert_array_equal(back["confidence"], remote["confidence"])
        np.testing.assert_array_equal(back["rank"], remote["rank"])
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_query_store_with_failures_and_tiny_sequences(tiny_corpus, tmp_path, cluster_client, embedded):
    import pretty_midi

    from msdmatch.stages import featurize

    src = tmp_path / "midi"
    src.mkdir()
    (src / "broken.mid").write_bytes(b"MThd\x00\x00")
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes.append(pretty_midi.Note(100, 60, 0.0, 0.1))  # a few frames, one hash word
    pm.instruments.append(inst)
    pm.write(str(src / "blip.mid"))
    make_midi(7, seconds=12).write(str(src / "short.mid"))  # just above MIN_SECONDS
    q = str(tmp_path / "q.zarr")
    featurize.run(str(src), q, client=cluster_client, kind="midi", progress=False)
    embed.run(q, client=cluster_client, progress=False)
    s = match.run(q, embedded["audio"], client=cluster_client, rerank=3, verify=3, progress=False)
    t = s["table"]
    assert sorted(set(t["query_id"].tolist())) == ["short"]  # broken and blip failed in featurize
    assert s["failures"] == 0
    for c in ("dhs_score", *verify.VERIFY_COLUMNS):
        assert np.all(np.isfinite(t[c])), c


def test_prune_keeps_the_top_k_by_hub_penalised_distance(embedded, cluster_client):
    """The prune ranks by distance plus the hub penalty; MATCHES reports the plain PSE distance."""
    from msdmatch.io.modelfile import load_model
    from msdmatch.io.store import Store

    t = _table(match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client, prune_k=3, rerank=3,
                         verify=1, keep="all", progress=False))
    Q, D = Store(embedded["midi-synth"]), Store(embedded["audio"])
    info = load_model("pse-midi-synth")
    E_q, E_d = Q.group["pse/pse-midi-synth"][:].astype(np.float64), D.group["pse/pse-midi-synth"][:].astype(np.float64)
    hub = D.group["hub/pse-midi-synth"][:].astype(np.float64)
    raw = ((E_q[:, None] - E_d[None]) ** 2).sum(-1)
    penalised = raw + info.hub["weight"] * (hub + 1.0)[None]
    assert not np.array_equal(np.argsort(raw, axis=1), np.argsort(penalised, axis=1))  # the penalty matters here
    for qi, q in enumerate(Q.ids):
        sel = t["query_id"] == q
        want = [D.ids[j] for j in np.argsort(penalised[qi], kind="stable")[:3]]
        assert sorted(t["track_id"][sel].tolist()) == sorted(want)
        for tid, d in zip(t["track_id"][sel], t["pse_distance"][sel]):
            assert d == pytest.approx(np.sqrt(raw[qi, D.ids.index(tid)]), abs=1e-5)


def test_rerank_keeps_the_top_r_by_hub_corrected_ratio(embedded, cluster_client):
    """The rerank orders by DHS ratio less the preview's hub term; MATCHES reports both."""
    from msdmatch.io.modelfile import load_model
    from msdmatch.io.store import Store
    from msdmatch.kernels.fusion import dhs_ratio

    D = Store(embedded["audio"])
    t = _table(match.run(embedded["midi-synth"], embedded["audio"], client=cluster_client, prune_k=D.n, rerank=3,
                         verify=1, keep="all", progress=False))
    info = load_model("dhs-midi-synth")
    hub = D.group["hub/dhs-midi-synth"][:].astype(np.float64)
    term = info.hub["weight"] * hub[[D.ids.index(x) for x in t["track_id"]]]
    np.testing.assert_allclose(t["dhs_hub"], term)
    ratio = dhs_ratio(t["dhs_score"], t["dhs_matrix_mean"])
    moved = 0
    for q in np.unique(t["query_id"]):
        sel = t["query_id"] == q
        kept = set(t["track_id"][sel & (t["stage"] != "prune")].tolist())
        key = ratio[sel] - term[sel]
        assert kept == set(t["track_id"][sel][np.lexsort((t["pse_distance"][sel], key))[:3]].tolist())
        moved += kept != set(t["track_id"][sel][np.argsort(ratio[sel], kind="stable")[:3]].tolist())
    assert moved  # the correction changed some query's top R here
