"""A database that grows: featurize --append, then embed only the new items; locally and on S3."""
from __future__ import annotations

import shutil

import numpy as np
import pytest


def _split(tiny_corpus, tmp_path):
    files = sorted((tiny_corpus / "audio").glob("*.mp3"))
    first, second, every = tmp_path / "first", tmp_path / "second", tmp_path / "every"
    for d in (first, second, every):
        d.mkdir()
    for k, f in enumerate(files):
        shutil.copy(f, (first if k < 4 else second) / f.name)
        shutil.copy(f, every / f.name)
    shutil.copy(files[0], second / files[0].name)  # already in the store: skipped, counted
    return first, second, every


def _url(where, tmp_path, s3, name):
    if where == "local":
        return str(tmp_path / name), None
    return f"s3://{s3['bucket']}/{name}", s3["storage_options"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_append_then_embed_only_the_new_items(where, tiny_corpus, tmp_path, cluster_client, request):
    from msdmatch.io.store import Store
    from msdmatch.stages import embed, featurize

    s3 = request.getfixturevalue("s3") if where == "s3" else None
    first, second, every = _split(tiny_corpus, tmp_path)
    url, so = _url(where, tmp_path, s3, "grown.zarr")
    ref, _ = _url("local", tmp_path, None, "all.zarr")
    kw = dict(client=cluster_client, kind="audio", partition_size=3, progress=False)
    featurize.run(str(first), url, storage_options=so, **kw)
    e1 = embed.run(url, client=cluster_client, partition_size=3, storage_options=so, progress=False)
    assert e1["parts_run"] == 2
    s = featurize.run(str(second), url, storage_options=so, append=True, **kw)
    assert (s.items, s.skipped) == (6, 1)
    st = Store(url, storage_options=so)
    assert st.attrs["revision"] == 1 and st.n == 6
    pse = [k for k in st.group["pse"].array_keys()]
    assert pse and all(st.group[f"pse/{k}"].attrs["complete"] for k in pse)
    e2 = embed.run(url, client=cluster_client, partition_size=3, storage_options=so, progress=False,
                   max_parts=0)
    st = Store(url, storage_options=so)  # mid-embed, match sees the models' arrays as incomplete
    assert not any(st.group[f"pse/{k}"].attrs["complete"] for k in pse)
    assert not st.group["screen/frames"].attrs["complete"]
    e2 = embed.run(url, client=cluster_client, partition_size=3, storage_options=so, progress=False)
    assert e2["parts_run"] == 1  # only items 4-5, in the shard that starts at item 4
    # the grown store equals one featurized and embedded in one go from the same files
    featurize.run(str(every), ref, **kw)
    embed.run(ref, client=cluster_client, partition_size=3, progress=False)
    a, b = Store(url, storage_options=so), Store(ref)
    assert a.ids == b.ids and np.array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.group["features"][:], b.group["features"][:])
    for name in [k for k in b.group["pse"].array_keys()]:
        np.testing.assert_allclose(a.group[f"pse/{name}"][:], b.group[f"pse/{name}"][:], rtol=1e-5, atol=1e-6)
    for path in ["screen/frames", "screen/offsets"] + [f"dhs/{n}/{x}" for n in b.group["dhs"].group_keys()
                                                        for x in ("words", "offsets")]:
        np.testing.assert_array_equal(a.group[path][:], b.group[path][:])
    # appending the same files again changes nothing
    s = featurize.run(str(second), url, storage_options=so, append=True, **kw)
    assert (s.items, s.skipped, Store(url, storage_options=so).attrs["revision"]) == (6, 3, 1)


def test_append_refuses_another_modality_and_overwrite(tiny_corpus, tmp_path, cluster_client):
    from msdmatch.errors import ParameterError
    from msdmatch.stages import featurize

    first, second, _ = _split(tiny_corpus, tmp_path)
    url = str(tmp_path / "db.zarr")
    featurize.run(str(first), url, client=cluster_client, kind="audio", progress=False)
    with pytest.raises(ParameterError, match="choose one"):
        featurize.run(str(second), url, client=cluster_client, kind="audio", append=True, overwrite=True)
    midi = tmp_path / "m"
    midi.mkdir()
    from conftest import make_midi

    make_midi(1, seconds=12.0).write(str(midi / "a.mid"))
    with pytest.raises(ParameterError, match="same kind"):
        featurize.run(str(midi), url, client=cluster_client, kind="midi", mode="pianoroll", append=True,
                      progress=False)


# on S3 ~45 s: slow; the local case and the S3 append+embed case stay in CI
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_match_after_appending_matches_only_the_new_queries(where, tiny_corpus, tmp_path, cluster_client, request):
    """New queries appended to the query store: a re-run commits only their batches; a grown DB is refused."""
    from msdmatch.errors import ParameterError
    from msdmatch.io.matches_table import read_matches
    from msdmatch.stages import embed, featurize
    from msdmatch.stages.match import job as match

    midi = sorted((tiny_corpus / "midi").glob("*.mid"))
    first, later = tmp_path / "qa", tmp_path / "qb"
    first.mkdir()
    later.mkdir()
    for k, f in enumerate(midi):
        shutil.copy(f, (first if k < 4 else later) / f.name)
    s3 = request.getfixturevalue("s3") if where == "s3" else None
    (db, so), (q, _), (out, _) = (_url(where, tmp_path, s3, n) for n in ("db.zarr", "q.zarr", "matches"))
    kw = dict(client=cluster_client, progress=False, storage_options=so)
    featurize.run(str(tiny_corpus / "audio"), db, kind="audio", **kw)
    featurize.run(str(first), q, kind="midi", mode="pianoroll", **kw)
    embed.run(db, **kw)
    embed.run(q, **kw)
    s1 = match.run(q, db, out, batch_size=2, **kw)
    assert (s1["batches_run"], s1["batches_skipped"]) == (2, 0)
    featurize.run(str(later), q, kind="midi", mode="pianoroll", append=True, **kw)
    embed.run(q, **kw)
    s2 = match.run(q, db, out, batch_size=2, **kw)
    assert (s2["batches_run"], s2["batches_skipped"]) == (1, 2)
    grown = read_matches(out, storage_options=so)
    fresh = match.run(q, db, str(tmp_path / "fresh.parquet"), batch_size=2, **kw)
    assert fresh["queries"] == 6
    again = read_matches(str(tmp_path / "fresh.parquet"))
    assert sorted(set(grown["query_id"].tolist())) == sorted(set(again["query_id"].tolist()))
    order = lambda t: np.lexsort((t["rank"], t["query_id"]))  # noqa: E731
    np.testing.assert_array_equal(grown["track_id"][order(grown)], again["track_id"][order(again)])
    # the database grows: results against the old one are not mixed with new ones
    extra = tmp_path / "more"
    extra.mkdir()
    from conftest import make_midi, write_mp3

    from msdmatch.io.synth import render

    write_mp3(extra / "TRNEW000000000001.mp3", render(make_midi(9, seconds=12.0), sr=22050) * 0.8, 22050)
    featurize.run(str(extra), db, kind="audio", append=True, **kw)
    embed.run(db, **kw)
    with pytest.raises(ParameterError, match="DB changed.*--overwrite"):
        match.run(q, db, out, batch_size=2, **kw)
